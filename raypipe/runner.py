"""The runner: stages in order, fingerprints, cache, resume, run manifest, progress.

A stage's fingerprint hashes its own spec sections, its input's fingerprint, the
data fingerprint and the raypipe code. A stage whose artifact with that
fingerprint is complete is skipped ("cached"); a failed run therefore resumes from
the first stage without a complete artifact. ``force`` recomputes a stage and all
after it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from raypipe import __version__
from raypipe.errors import GateFailed, RaypipeError, SpecError, StageFailed
from raypipe.progress import Progress
from raypipe.spec import Spec
from raypipe.store import Store


@dataclass(frozen=True)
class StageDef:
    name: str
    sections: tuple[str, ...]  # spec sections (YAML keys) that configure the stage
    func: str  # "module:function" implementing run(ctx, inputs) -> outputs


STAGES: tuple[StageDef, ...] = (
    StageDef("ingest", ("data",), "raypipe.ingest.stage:run"),
    StageDef("validate", ("validate",), "raypipe.validate.stage:run"),
    StageDef("features", ("features",), "raypipe.features.stage:run"),
    StageDef("train", ("model", "train", "tune"), "raypipe.train.stage:run"),
    StageDef("evaluate", ("evaluate",), "raypipe.evaluate.stage:run"),
    StageDef("register", ("name", "registry"), "raypipe.registry:run_stage"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass
class StageOutput:
    """What a finished stage hands on: its artifact folder and its outputs."""

    name: str
    fingerprint: str
    store: Store
    outputs: dict[str, Any]


@dataclass
class StageContext:
    """What a stage gets besides its inputs."""

    spec: Spec
    root: Store
    artifact: Store
    run_id: str
    fingerprint: str
    data_fingerprint: str
    progress: Progress
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ray(self) -> None:
        """Connect to Ray on first use: a fully cached run never starts it."""
        from raypipe.runtime import connect_for

        connect_for(self.spec, self.address)

    def log(self, msg: str) -> None:
        self.progress.detail(msg)


@lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of raypipe's own source: new code invalidates cached artifacts."""
    h = hashlib.sha256(__version__.encode())
    for p in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(p.relative_to(Path(__file__).parent).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(spec: Spec, stage: StageDef, upstream: str | None, data_fp: str) -> str:
    doc = {
        "stage": stage.name,
        "sections": {k: (spec.name if k == "name" else spec.section(k)) for k in stage.sections},
        "upstream": upstream,
        "data": data_fp,
        "code": code_hash(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "raypipe": __version__}
    for pkg in ("ray", "torch", "scikit-learn", "pyarrow", "pandas", "numpy", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunResult:
    run_id: str
    stages: list[dict[str, Any]]
    outputs: dict[str, StageOutput]
    manifest_path: str
    metrics: dict[str, Any] = field(default_factory=dict)
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
            "rows": {split: c["valid"] for split, c in out.get("counts", {}).items()},
            "quarantined": out.get("quarantined", 0),
            "warnings": out.get("warnings", []),
            "report": val.store.full_uri(out["report_html"]) if out.get("report_html") else None,
        }


class Runner:
    """Runs a spec's stages in order with caching and resume.

    Args:
        spec: a validated spec.
        force: recompute this stage and every stage after it.
        until: stop after this stage.
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
    ) -> None:
        for opt, value in (("--force", force), ("--until", until)):
            if value is not None and value not in STAGE_NAMES:
                raise SpecError(f"{opt} {value!r} is not a stage; use one of {list(STAGE_NAMES)}")
        self.spec, self.force, self.until, self.address = spec, force, until, address
        self.progress = progress or Progress()
        self.root = Store(spec.storage)
        self.run_id = new_run_id()

    def run(self) -> RunResult:
        from raypipe.ingest.sources import data_fingerprint

        from raypipe.tracking import check_available

        spec = self.spec
        check_available(spec)
        data_fp = data_fingerprint(spec.data.source, nonce=self.run_id)
        manifest: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": spec.name,
            "started": datetime.now(timezone.utc).isoformat(),
            "spec": spec.model_dump(mode="json", by_alias=True),
            "data_fingerprint": data_fp,
            "code_hash": code_hash(),
            "versions": library_versions(),
            "seeds": {"split": spec.data.split.seed, "train": spec.train.seed},
            "stages": [],
            "status": "running",
        }
        manifest_rel = f"runs/{self.run_id}/manifest.json"
        result = RunResult(self.run_id, manifest["stages"], {}, self.root.full_uri(manifest_rel))
        forced = False
        upstream: StageOutput | None = None
        self.progress.start(spec.name, self.run_id, [s.name for s in STAGES])
        try:
            for stage in STAGES:
                forced = forced or stage.name == self.force
                fp = fingerprint(spec, stage, upstream.fingerprint if upstream else None, data_fp)
                record = {"name": stage.name, "fingerprint": fp, "status": "running", "seconds": 0.0}
                manifest["stages"].append(record)
                self.root.write_json(manifest_rel, manifest)
                out = self._run_stage(stage, fp, data_fp, upstream, result.outputs, forced, record)
                result.outputs[stage.name] = out
                upstream = out
                self.root.write_json(manifest_rel, manifest)
                if stage.name == self.until:
                    break
            result.metrics = result.outputs["evaluate"].outputs.get("metrics", {}) if "evaluate" in result.outputs else {}
            if "register" in result.outputs:
                reg = result.outputs["register"].outputs
                result.version, result.alias = reg["version"], reg.get("alias")
                if spec.tracking.mlflow_uri and manifest["stages"][-1]["status"] == "ran":
                    manifest["tracking"] = self._export(result.version)
                if reg["status"] == "rejected":
                    result.status = "rejected"
                    raise GateFailed(reg["gate_failures"], version=reg["version"])
            manifest["status"] = result.status
        except BaseException as exc:
            manifest["status"] = "rejected" if isinstance(exc, GateFailed) else "failed"
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            manifest["metrics"] = result.metrics
            manifest["version"] = result.version
            manifest["finished"] = datetime.now(timezone.utc).isoformat()
            self.root.write_json(manifest_rel, manifest)
            self.root.write_json(f"runs/{self.run_id}/summary.json", result.summary())
            self.progress.finish(manifest["status"])
        return result

    def _export(self, version: int) -> dict[str, Any]:
        """Log the new version to MLflow; a tracking failure is reported, the model stays registered."""
        from raypipe.tracking import export_version

        try:
            mlflow_run = export_version(self.spec, self.run_id, version)
        except Exception as exc:
            self.progress.detail(f"MLflow export to {self.spec.tracking.mlflow_uri!r} failed: {type(exc).__name__}: {exc}")
            return {"mlflow_uri": self.spec.tracking.mlflow_uri, "error": f"{type(exc).__name__}: {exc}"}
        self.progress.detail(f"logged to MLflow {self.spec.tracking.mlflow_uri} as run {mlflow_run}")
        return {"mlflow_uri": self.spec.tracking.mlflow_uri, "mlflow_run_id": mlflow_run}

    def _run_stage(
        self,
        stage: StageDef,
        fp: str,
        data_fp: str,
        upstream: StageOutput | None,
        earlier: dict[str, StageOutput],
        forced: bool,
        record: dict[str, Any],
    ) -> StageOutput:
        rel = f"stages/{stage.name}/{fp[:20]}"
        artifact = self.root.sub(rel)
        if self.root.is_complete(rel) and not forced:
            record["status"] = "cached"
            self.progress.stage_done(stage.name, "cached", 0.0)
            outputs = self.root.read_json(rel, "outputs.json")
            return StageOutput(stage.name, fp, artifact, outputs)
        if forced and self.root.is_complete(rel):
            self.root.delete(rel)
        self.root.begin_artifact(rel)
        ctx = StageContext(
            spec=self.spec, root=self.root, artifact=artifact, run_id=self.run_id, fingerprint=fp,
            data_fingerprint=data_fp, progress=self.progress, address=self.address, extra={"forced": forced},
        )
        inputs = dict(earlier)  # every earlier stage's outputs, by stage name
        fn = _resolve(stage.func)
        self.progress.stage_start(stage.name)
        t0 = time.perf_counter()
        try:
            outputs = fn(ctx, inputs)
        except RaypipeError:
            record.update(status="failed", seconds=round(time.perf_counter() - t0, 3))
            self.progress.stage_done(stage.name, "failed", record["seconds"])
            raise
        except Exception as exc:
            record.update(status="failed", seconds=round(time.perf_counter() - t0, 3), traceback=traceback.format_exc())
            self.progress.stage_done(stage.name, "failed", record["seconds"])
            raise StageFailed(
                f"stage {stage.name!r} failed: {type(exc).__name__}: {exc}\n"
                f"Finished stages are cached; run again to resume from {stage.name!r}.{self._logs_hint()}"
            ) from exc
        self.root.write_json(f"{rel}/outputs.json", outputs)
        self.root.complete_artifact(rel, {"stage": stage.name, "fingerprint": fp, "run_id": self.run_id})
        record.update(status="ran", seconds=round(time.perf_counter() - t0, 3))
        self.progress.stage_done(stage.name, "ran", record["seconds"])
        return StageOutput(stage.name, fp, artifact, outputs)

    def _logs_hint(self) -> str:
        """Where Ray's worker output went, when it was kept off the console (``ray.log_to_driver``)."""
        from raypipe.runtime import worker_logs

        logs = None if self.spec.ray.log_to_driver else worker_logs()
        return f"\nRay workers' output: {logs} (or set ray.log_to_driver: true)" if logs else ""


def _resolve(path: str) -> Callable[..., dict[str, Any]]:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)
