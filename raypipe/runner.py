"""The runner: stages in order, fingerprints, cache, resume, run manifest, progress.

A stage's fingerprint hashes its spec sections, its input's fingerprint, the data fingerprint,
its code closure (:func:`raypipe.lineage.code_hash`) and the digest of the outside state it reads
(``StageDef.externals``). A stage whose artifact with that fingerprint is complete is "cached": a
failed run resumes from the first stage without one. ``force`` recomputes a stage and all after it.
``only`` runs one stage, whose earlier stages must be complete artifacts already (an orchestrator's
task per stage). ``spec.runner.retries`` tries a stage again after a transient failure
(:mod:`raypipe.transient`).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from raypipe.errors import GateFailed, RaypipeError, SpecError, StageFailed
from raypipe.lineage import code_hash, library_versions
from raypipe.progress import Progress
from raypipe.spec import Spec
from raypipe.stage import OUTPUT_TYPES, OUTPUTS_FILE, StageContext, StageDef, StageOutput, artifact_path
from raypipe.store import Store
from raypipe.transient import transient_reason

STAGES: tuple[StageDef, ...] = (
    StageDef("ingest", ("data",), "raypipe.ingest.stage:run"),
    StageDef("validate", ("validate", "features.windows"), "raypipe.validate.stage:run",
             externals="raypipe.validate.reference:digest"),
    StageDef("features", ("features",), "raypipe.features.stage:run"),
    StageDef("train", ("model", "train", "tune"), "raypipe.train.stage:run"),
    StageDef("evaluate", ("evaluate",), "raypipe.evaluate.stage:run",
             externals="raypipe.evaluate.champion:digest"),
    StageDef("register", ("name", "registry"), "raypipe.register.stage:run"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
DATA_FINGERPRINT = "raypipe.ingest.sources:data_fingerprint"  # the source's digest, before any Ray work


def fingerprint(spec: Spec, stage: StageDef, upstream: str | None, data_fp: str, external: str = "") -> str:
    """The stage's fingerprint; ``external`` is the digest of the outside state it reads ("" for none)."""
    doc = {
        "stage": stage.name,
        "sections": {k: (spec.name if k == "name" else spec.section(k)) for k in stage.sections},
        "upstream": upstream,
        "data": data_fp,
        "code": code_hash(stage.package),
    }
    if external:
        doc["external"] = external
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def check_stage_options(*, force: str | None = None, until: str | None = None, only: str | None = None) -> None:
    """``--force``/``--until``/``--only`` name stages and go together (SpecError, exit 2, otherwise)."""
    for opt, value in (("--force", force), ("--until", until), ("--only", only)):
        if value is not None and value not in STAGE_NAMES:
            raise SpecError(f"{opt} {value!r} is not a stage; use one of {list(STAGE_NAMES)}")
    if only is not None and until is not None:
        raise SpecError(f"--only {only} runs one stage; drop --until {until}")
    if only is not None and force not in (None, only):
        raise SpecError(f"--only {only} cannot recompute {force!r}; use --force {only}, or run --force {force} "
                        f"without --only")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunResult:
    run_id: str
    stages: list[dict[str, Any]]
    outputs: dict[str, StageOutput]
    manifest_path: str
    metrics: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] | None = None  # the same metrics of the trivial and linear baselines (supervised tasks)
    version: int | None = None
    alias: str | None = None
    status: str = "ok"
    endpoint: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "stages": {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in self.stages},
            "data": self._data_summary(),
            "metrics": self.metrics,
            "baselines": self.baselines,
            "version": self.version,
            "alias": self.alias,
            "endpoint": self.endpoint,
            "manifest": self.manifest_path,
        }

    def _data_summary(self) -> dict[str, Any] | None:
        """Rows per split, quarantined rows, column warnings and the data report (validate's outputs)."""
        val = self.outputs.get("validate")
        if val is None:
            return None
        out = val.outputs
        return {
            "rows": {split: c["valid"] for split, c in out.counts.items()},
            "quarantined": out.quarantined,
            "warnings": out.warnings,
            "report": val.store.full_uri(out.report_html),
        }


class Runner:
    """Runs a spec's stages in order with caching and resume.

    Args:
        spec: a validated spec.
        force: recompute this stage and every stage after it.
        until: stop after this stage.
        only: run this stage alone; every earlier stage must be a complete artifact (else SpecError, exit 2).
        run_key: ties the separate processes of one orchestrator run together: a source that cannot be hashed
            (SQL or HTTP without ``snapshot``) takes it as its snapshot instead of this process's run id.
        address: Ray address overriding ``spec.ray.address``.
        progress: where progress is shown (a default console one otherwise).
    """

    def __init__(
        self,
        spec: Spec,
        *,
        force: str | None = None,
        until: str | None = None,
        address: str | None = None,
        progress: Progress | None = None,
        trigger: dict[str, Any] | None = None,
        only: str | None = None,
        run_key: str | None = None,
    ) -> None:
        check_stage_options(force=force, until=until, only=only)
        self.spec, self.force, self.until, self.address, self.only = spec, force, until, address, only
        self.run_key = run_key
        self.progress = progress or Progress()
        self.root = Store(spec.storage)
        self.run_id = new_run_id()
        self.trigger = trigger  # why this run started, when not by hand (a retrain: its reason and parent champion)

    def run(self) -> RunResult:
        spec = self.spec
        data_fp = _resolve(DATA_FINGERPRINT)(spec.data.source, nonce=self.run_key or self.run_id)
        manifest: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": spec.name,
            "started": datetime.now(timezone.utc).isoformat(),
            "spec": spec.redacted(),
            "data_fingerprint": data_fp,
            "code_hash": code_hash(),
            "versions": library_versions(),
            "seeds": {"split": spec.data.split.seed, "train": spec.train.seed},
            "stages": [],
            "status": "running",
        }
        if self.trigger:
            manifest["trigger"] = self.trigger
        if self.only:
            manifest["only"] = self.only
        if self.run_key:
            manifest["run_key"] = self.run_key
        manifest_rel = f"runs/{self.run_id}/manifest.json"
        result = RunResult(self.run_id, manifest["stages"], {}, self.root.full_uri(manifest_rel))
        forced = False
        upstream: StageOutput | None = None
        self.progress.start(spec.name, self.run_id, [s.name for s in STAGES])
        try:
            for stage in STAGES:
                forced = forced or stage.name == self.force
                up = upstream.fingerprint if upstream else None
                base = fingerprint(spec, stage, up, data_fp)
                external = _resolve(stage.externals)(spec, self.root, base) if stage.externals else ""
                fp = fingerprint(spec, stage, up, data_fp, external) if external else base
                if self.only and stage.name != self.only:
                    self._require_complete(stage, fp)
                record = {"name": stage.name, "fingerprint": fp, "status": "running", "seconds": 0.0}
                manifest["stages"].append(record)
                self.root.write_json(manifest_rel, manifest)
                out = self._run_stage(stage, fp, data_fp, result.outputs, forced, record, base, external)
                result.outputs[stage.name] = out
                upstream = out
                self.root.write_json(manifest_rel, manifest)
                if stage.name in (self.until, self.only):
                    break
            if "evaluate" in result.outputs:
                result.metrics = result.outputs["evaluate"].outputs.metrics
                result.baselines = result.outputs["evaluate"].outputs.baselines
            if "register" in result.outputs:
                reg = result.outputs["register"].outputs
                result.version, result.alias = reg.version, reg.alias
                if reg.tracking:
                    manifest["tracking"] = reg.tracking
                if reg.status == "rejected":
                    result.status = "rejected"
                    raise GateFailed(reg.gate_failures, version=reg.version)
            manifest["status"] = result.status
        except BaseException as exc:
            manifest["status"] = "rejected" if isinstance(exc, GateFailed) else "failed"
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            failed = manifest.get("status") == "failed"
            if self.spec.tracking.mlflow_uri and "tracking" not in manifest and (failed or not self.run_key) and any(
                    r["name"] == "train" and r.get("status") in ("ran", "failed", "running") for r in manifest["stages"]):
                # the train stage opened an MLflow run that no export finished (a failure, or --until); an
                # orchestrator's run (--run-key) leaves it open for its register task, in another process
                from raypipe.tracking import close_run

                close_run(self.spec, self.run_key or self.run_id, "FAILED" if failed else "FINISHED")
            manifest["metrics"] = result.metrics
            manifest["baselines"] = result.baselines
            manifest["version"] = result.version
            manifest["finished"] = datetime.now(timezone.utc).isoformat()
            self.root.write_json(manifest_rel, manifest)
            self.root.write_json(f"runs/{self.run_id}/summary.json", result.summary())
            self.progress.finish(manifest["status"])
        return result

    def _require_complete(self, stage: StageDef, fp: str) -> None:
        """``--only``: an earlier stage must already be a complete artifact with this fingerprint."""
        rel = artifact_path(stage.name, fp)
        if self.root.is_complete(rel):
            return
        hint = ""
        if self.run_key is None and _resolve(DATA_FINGERPRINT)(self.spec.data.source, nonce="a") != \
                _resolve(DATA_FINGERPRINT)(self.spec.data.source, nonce="b"):
            hint = (" This source cannot be hashed: each process reads it anew unless its stages share a key; "
                    "pass the same --run-key to every stage of one orchestrator run (or set data.source.snapshot).")
        raise SpecError(
            f"--only {self.only} needs the {stage.name!r} stage complete, with fingerprint {fp[:12]} "
            f"({self.root.full_uri(rel)} is missing or incomplete); run `raypipe run SPEC --until {stage.name}` "
            f"(or --only {stage.name}) first.{hint}")

    def _run_stage(
        self,
        stage: StageDef,
        fp: str,
        data_fp: str,
        earlier: dict[str, StageOutput],
        forced: bool,
        record: dict[str, Any],
        base: str,
        external: str,
    ) -> StageOutput:
        rel = artifact_path(stage.name, fp)
        artifact = self.root.sub(rel)
        kind = OUTPUT_TYPES[stage.name]
        if self.root.is_complete(rel) and not forced:
            record["status"] = "cached"
            self.progress.stage_done(stage.name, "cached", 0.0)
            outputs = kind.from_json(self.root.read_json(rel, OUTPUTS_FILE))
            return StageOutput(stage.name, fp, artifact, outputs, base, external)
        if forced and self.root.is_complete(rel):
            self.root.delete(rel)
        self.root.begin_artifact(rel)
        ctx = StageContext(
            spec=self.spec, root=self.root, artifact=artifact, run_id=self.run_id, fingerprint=fp,
            data_fingerprint=data_fp, progress=self.progress, address=self.address, forced=forced,
            base_fingerprint=base, external=external, trigger=self.trigger, run_key=self.run_key,
        )
        inputs = dict(earlier)  # every earlier stage's outputs, by stage name
        fn = _resolve(stage.func)
        self.progress.stage_start(stage.name)
        t0 = time.perf_counter()
        retries = self.spec.runner.retries
        attempt = 0
        while True:
            try:
                outputs = fn(ctx, inputs)
                break
            except Exception as exc:
                reason = transient_reason(exc) if "transient" in retries.on and attempt < retries.count else None
                if reason is None:
                    self._stage_failed(stage, record, t0, exc)
                attempt += 1
                wait = retries.backoff_s * 2 ** (attempt - 1)
                record.setdefault("retries", []).append({"attempt": attempt, "error": reason, "waited_s": wait})
                self.progress.detail(f"{stage.name}: transient failure ({reason}); try {attempt + 1} of "
                                     f"{retries.count + 1} in {wait:g} s (runner.retries)")
                time.sleep(wait)
                self.root.delete(rel)  # what the failed try left; the next starts a fresh artifact
                self.root.begin_artifact(rel)
        if not isinstance(outputs, kind):
            raise TypeError(f"stage {stage.name!r} returned {type(outputs).__name__}, not {kind.__name__}")
        self.root.write_json(f"{rel}/{OUTPUTS_FILE}", outputs.to_json())
        self.root.complete_artifact(rel, {"stage": stage.name, "fingerprint": fp, "run_id": self.run_id})
        record.update(status="ran", seconds=round(time.perf_counter() - t0, 3))
        self.progress.stage_done(stage.name, "ran", record["seconds"])
        return StageOutput(stage.name, fp, artifact, outputs, base, external)

    def _stage_failed(self, stage: StageDef, record: dict[str, Any], t0: float, exc: Exception) -> None:
        """Record the failure and raise: a raypipe error as it is, anything else as StageFailed."""
        tries = len(record.get("retries", ())) + 1
        record.update(status="failed", seconds=round(time.perf_counter() - t0, 3))
        self.progress.stage_done(stage.name, "failed", record["seconds"])
        if isinstance(exc, RaypipeError):
            raise exc
        record["traceback"] = traceback.format_exc()
        after = f" (after {tries} tries: runner.retries)" if tries > 1 else ""
        raise StageFailed(
            f"stage {stage.name!r} failed{after}: {type(exc).__name__}: {exc}\n"
            f"Finished stages are cached; run again to resume from {stage.name!r}.{self._logs_hint()}"
        ) from exc

    def _logs_hint(self) -> str:
        """Where Ray's worker output went, when it was kept off the console (``ray.log_to_driver``)."""
        from raypipe.runtime import worker_logs

        logs = None if self.spec.ray.log_to_driver else worker_logs()
        return f"\nRay workers' output: {logs} (or set ray.log_to_driver: true)" if logs else ""


def _resolve(path: str) -> Callable[..., Any]:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)
