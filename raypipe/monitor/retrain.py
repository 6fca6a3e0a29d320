"""The closed loop: a window that calls for it → a run on fresh data → the gate against the champion → promotion → swap.

``monitor.retrain`` (:class:`raypipe.spec.RetrainSection`) says what triggers a retrain and where
the fresh labelled rows are. :func:`trigger_of` turns a checked window into a :class:`Trigger`
with a reason a person can read ("drift on amount: psi 0.41 > 0.1 in window ..."); :func:`retrain`
then, in the caller's process:

1. refuses politely (status ``skipped``, never an error) while another retrain of the pipeline
   holds the lease, within ``cooldown_s`` of the last attempt (whatever its outcome: a failing
   retrain never loops), or past ``max_runs_per_day``;
2. takes the lease (``<storage>/monitor/<pipeline>/retrain/LEASE.json``, created exclusively; a
   lease whose holder died on this host, or older than ``lease_s``, is taken over, and the
   attempt it held is marked ``abandoned``);
3. assembles the fresh data (``monitor.retrain.data``, and/or the logged requests of the last
   ``window`` that received labels, written as a parquet snapshot under the attempt's folder),
   and stops with ``skipped`` when it holds fewer than ``min_rows`` rows;
4. runs the pipeline on it (a new data fingerprint: ingest onward re-runs, the rest of the cache
   is used as usual) with the gate's ``vs_champion`` on, so the candidate is compared with the
   champion on the fresh test split, and the run's manifest records the trigger and the parent
   champion (``raypipe runs list`` shows the reason);
5. a candidate that passes becomes champion (the registry's audit log holds the promotion with
   the trigger's reason); the running endpoint, if any, is swapped in place through
   :func:`raypipe.serve.deploy.deploy` (the zero-downtime path). A rejected candidate changes
   nothing.

Every attempt is a JSON file under ``retrain/attempts/`` (started, trigger, status, run id,
version, promoted), the ledger the cooldown and the daily cap read. A run that crashes leaves
its finished stages cached, so the next attempt on the same fresh data resumes from them.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from raypipe.store import Store

DAY_S = 86_400.0


@dataclass
class Trigger:
    """Why a retrain was asked for: ``kind`` (drift, performance, alert, schedule) and a sentence."""

    kind: str
    reason: str


@dataclass
class RetrainOutcome:
    """What :func:`retrain` did: ``status`` promoted, rejected, failed or skipped."""

    status: str
    reason: str
    trigger: str
    run_id: str | None = None
    version: int | None = None
    parent: int | None = None
    promoted: bool = False
    attempt: str | None = None
    detail: list[str] = field(default_factory=list)
    endpoint: str | None = None

    def summary(self) -> dict[str, Any]:
        """The ``retrain`` part of ``raypipe monitor --retrain --json``."""
        return asdict(self)


# --- the trigger ------------------------------------------------------------------------
def _ratio(c: Any) -> float:
    return c.value / c.threshold if c.threshold else 0.0


def describe(report: Any) -> str:
    """The drift a report found, as one sentence: the column furthest over its threshold first."""
    parts = []
    drifted = sorted((report.columns[c] for c in report.drifted), key=_ratio, reverse=True)
    if drifted:
        top = drifted[0]
        more = f" (and {len(drifted) - 1} more column{'s' if len(drifted) > 2 else ''})" if len(drifted) > 1 else ""
        parts.append(f"drift on {top.column}: {top.statistic} {top.value:.3g} > {top.threshold:g}{more}")
    pred = report.prediction_drift or {}
    if pred.get("drifted"):
        p = max(pred["parts"].values(), key=lambda x: x["value"] / x["threshold"] if x["threshold"] else 0)
        parts.append(f"prediction drift: {p['statistic']} {p['value']:.3g} > {p['threshold']:g}")
    mv = report.multivariate or {}
    if mv.get("drifted"):
        parts.append(f"domain classifier ROC-AUC {mv['auc']:.3f} > {mv['threshold']:g}")
    return "; ".join(parts) + f" in window {report.input} (version {report.version})"


def trigger_of(check: Any, on: list[str]) -> Trigger | None:
    """The trigger a checked window (a :class:`MonitorReport` or a log :class:`WindowCheck`) raises.

    Drift, then performance below the gate, then a schedule when ``on`` holds it. A window with
    ``not_enough_data`` raises nothing. Drift and performance are returned even when ``on`` does not
    list them: the caller tells "found, not configured" (exit 5) from "nothing found" (exit 0).
    """
    reports = getattr(check, "reports", None)
    reports = [check] if reports is None else reports
    for r in reports:
        if r.status == "drift":
            return Trigger("drift", describe(r))
    for r in reports:
        if r.performance_below_gate:
            perf = r.performance
            below = "; ".join(f"{c.get('metric')} {c.get('value', float('nan')):.3g} vs {c.get('limit')}"
                              for c in perf.get("checks", []) if not c.get("passed")) or "a metric"
            return Trigger("performance", f"{perf.get('kind', '')} performance below the gate ({below}) in window "
                                          f"{r.input} (version {r.version})")
    if "schedule" in on:
        return Trigger("schedule", "scheduled retrain")
    return None


# --- lease and ledger -------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _alive(holder: dict[str, Any]) -> bool:
    """False when the holder ran on this host and its process is gone; True when unknown."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


class Ledger:
    """One JSON file per retrain attempt under ``<retrain>/attempts/``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self) -> list[dict[str, Any]]:
        names = [n for n in self.store.listdir("attempts") if n.endswith(".json")] if self.store.exists("attempts") else []
        return [self.store.read_json("attempts", n) for n in sorted(names)]

    def start(self, attempt: str, trigger: Trigger, parent: int | None) -> dict[str, Any]:
        entry = {"id": attempt, "started": time.time(), "started_at": _now(),
                 "trigger": trigger.kind, "reason": trigger.reason, "parent": parent, "status": "running",
                 "host": socket.gethostname(), "pid": os.getpid()}
        self.write(entry)
        return entry

    def write(self, entry: dict[str, Any]) -> None:
        self.store.write_json(f"attempts/{entry['id']}.json", entry)

    def finish(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
        entry = {**entry, **fields, "finished_at": _now()}
        self.write(entry)
        return entry


class Lease:
    """One retrain at a time per pipeline: ``LEASE.json``, created exclusively, removed when done."""

    NAME = "LEASE.json"

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.token = uuid.uuid4().hex

    def holder(self) -> dict[str, Any] | None:
        try:
            return self.store.read_json(self.NAME)
        except Exception:  # absent, or half written by a holder that died mid-write
            return None if not self.store.exists(self.NAME) else {"token": "?", "since": 0.0, "pid": -1,
                                                                   "host": socket.gethostname()}

    def stale(self, held: dict[str, Any]) -> bool:
        return not _alive(held) or time.time() - float(held.get("since", 0.0)) > self.ttl_s

    def acquire(self, attempt: str) -> tuple[bool, dict[str, Any] | None]:
        """(True, the lease it replaced if stale) or (False, the live holder)."""
        replaced = None
        held = self.holder()
        if held is not None:
            if not self.stale(held):
                return False, held
            replaced = held
            self.store.delete(self.NAME)
        mine = {"token": self.token, "attempt": attempt, "since": time.time(), "host": socket.gethostname(),
                "pid": os.getpid()}
        data = json.dumps(mine).encode()
        if self.store.is_local:
            try:
                fd = os.open(self.store.path(self.NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False, self.holder()
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:  # object stores have no exclusive create: write, then read back whose it is
            self.store.write_bytes(self.NAME, data)
            time.sleep(0.5)
            if (self.holder() or {}).get("token") != self.token:
                return False, self.holder()
        return True, replaced

    def release(self) -> None:
        if (self.holder() or {}).get("token") == self.token:
            self.store.delete(self.NAME)


# --- the fresh data -----------------------------------------------------------------------
class NotEnoughData(Exception):
    pass


def _count_rows(source: Any) -> int | None:
    """Rows of a file source (parquet: from the footers; csv/json: one Ray Data pass); None when unknown."""
    if source.type == "parquet":
        import pyarrow.dataset as pads

        store = Store(source.path) if "://" in source.path else None
        if store is not None:
            return pads.dataset(store.root, filesystem=store.fs, format="parquet").count_rows()
        return pads.dataset(source.path, format="parquet").count_rows()
    if source.type in ("csv", "json"):
        from raypipe.ingest.files import open_files

        return int(open_files(source).dataset.count())
    if source.type == "builtin":
        return int(source.rows)
    return None


def feedback_rows(spec: Any, out: Store, start: datetime, end: datetime) -> int:
    """Write the logged requests of ``[start, end)`` that received labels to ``out`` as parquet (Ray Data:
    the window never reaches the driver); their inputs and the label in the target column. Rows written."""
    import pyarrow.compute as pc

    from raypipe import predlog
    from raypipe.monitor.logwindow import _join_labels, label_lookups

    target = spec.data.target
    store = predlog.as_store(spec.storage)
    labels = label_lookups(store, spec.name, start)
    if not labels["request"] and not labels["ids"]:
        return 0
    ds = predlog.read_window(store, spec.name, start, end)
    if not ds.schema() or predlog.REQUEST_ID not in ds.schema().names:
        return 0

    def labelled(batch: Any) -> Any:
        batch = batch.filter(pc.not_equal(batch[predlog.ROLE], "shadow"))
        batch = _join_labels(batch, target, labels)
        if target not in batch.column_names:
            return batch.slice(0, 0).select([c for c in batch.column_names if not c.startswith("__")])
        batch = batch.filter(pc.is_valid(batch[target]))
        return batch.select([c for c in batch.column_names if not c.startswith("__")])

    rows = ds.map_batches(labelled, batch_format="pyarrow", zero_copy_batch=True).materialize()
    n = rows.count()
    if n:
        rows.write_parquet(out.full_uri(), filesystem=None)
    return int(n)


def compared_metric(spec: Any) -> str:
    """The metric a candidate is compared with the champion on: ``monitor.retrain.vs_champion_metric``,
    else ``evaluate.gate.vs_champion``'s, else the task's main one (the gate and the canary use it both)."""
    from raypipe.tasks import TASKS

    gate = spec.evaluate.gate.vs_champion
    return spec.monitor.retrain.vs_champion_metric or (gate.metric if gate else TASKS[spec.data.task].main_metric)


def fresh_spec(spec: Any, attempt: str) -> tuple[Any, int | None]:
    """The spec of the retrain run, and the fresh rows it holds (None: a source whose size is unknown here).

    Raises:
        NotEnoughData: fewer than ``monitor.retrain.min_rows`` fresh rows.
    """
    from raypipe.monitor.logwindow import parse_duration
    from raypipe.spec import ParquetSource, VsChampion

    cfg = spec.monitor.retrain
    source = cfg.data
    rows: int | None = None
    if cfg.include_feedback:
        snap = Store(spec.storage).sub("monitor", spec.name, "retrain", "data", attempt)
        end = datetime.now(timezone.utc)
        rows = feedback_rows(spec, snap, end - parse_duration(cfg.window, "monitor.retrain.window"), end)
        if source is not None:  # a parquet folder or file: its files are copied beside the labelled requests
            import pyarrow.fs as pafs

            if "://" in source.path:
                fs, root = pafs.FileSystem.from_uri(source.path)
            else:
                fs, root = pafs.LocalFileSystem(), os.path.abspath(source.path)
            info = fs.get_file_info(root)
            files = [info] if info.type == pafs.FileType.File else [
                i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
            for k, f in enumerate(files):
                pafs.copy_files(f.path, snap.path(f"fresh-{k:05d}.parquet"), source_filesystem=fs,
                                destination_filesystem=snap.fs)
            rows += _count_rows(source) or 0
        source = ParquetSource(type="parquet", path=snap.full_uri())
    else:
        rows = _count_rows(source)
    if rows is not None and rows < cfg.min_rows:
        raise NotEnoughData(f"{rows:,} fresh labelled rows < monitor.retrain.min_rows={cfg.min_rows:,}")
    data = spec.model_dump(mode="json", by_alias=True)
    data["data"]["source"] = source.model_dump(mode="json")
    data["evaluate"]["gate"]["vs_champion"] = VsChampion(metric=compared_metric(spec),
                                                         min_delta=cfg.min_delta).model_dump()
    data["registry"]["promote_to"] = "challenger" if cfg.promote == "canary" else "champion"
    from raypipe.spec import load_spec

    return load_spec(data), rows


# --- the loop's one step -------------------------------------------------------------------
def _gates(spec: Any, ledger: Ledger, now: float) -> str | None:
    """Why no retrain may start now (cooldown, daily cap), or None. Skipped attempts do not count."""
    cfg = spec.monitor.retrain
    entries = ledger.entries()
    watched = [e for e in entries if e.get("status") == "canary"]
    if watched:
        return f"a canary is being watched (version {watched[-1].get('version')}, attempt {watched[-1]['id']})"
    started = [float(e.get("started", 0.0)) for e in entries if e.get("status") != "skipped"]
    if started and now - max(started) < cfg.cooldown_s:
        return (f"cooldown: the last retrain started {now - max(started):.0f} s ago, "
                f"monitor.retrain.cooldown_s={cfg.cooldown_s:g}")
    today = sum(1 for t in started if now - t < DAY_S)
    if today >= cfg.max_runs_per_day:
        return f"daily cap: {today} retrains in the last 24 hours, monitor.retrain.max_runs_per_day={cfg.max_runs_per_day}"
    return None


def retrain(spec: Any, trigger: Trigger, *, address: str | None = None, progress: Any = None,
            swap: bool = True) -> RetrainOutcome:
    """One retrain for ``trigger`` (see the module docstring). Never raises for a run that fails or a
    gate that rejects: the outcome says so (``failed``, ``rejected``), and the ledger keeps it."""
    from raypipe.registry import Registry

    store = Store(spec.storage).sub("monitor", spec.name, "retrain")
    ledger = Ledger(store)
    blocked = _gates(spec, ledger, time.time())
    if blocked:
        return RetrainOutcome(status="skipped", reason=blocked, trigger=trigger.reason)
    attempt = f"{_now()}-{uuid.uuid4().hex[:8]}"
    lease = Lease(store, spec.monitor.retrain.lease_s)
    got, other = lease.acquire(attempt)
    if not got:
        return RetrainOutcome(status="skipped", trigger=trigger.reason,
                              reason=f"another retrain of {spec.name} holds the lease (attempt "
                                     f"{(other or {}).get('attempt')}, since {(other or {}).get('since')})")
    try:
        if other is not None:  # a stale lease: the attempt it covered died with its holder
            for e in ledger.entries():
                if e["id"] == other.get("attempt") and e.get("status") == "running":
                    ledger.finish(e, status="abandoned", reason="its process died holding the lease (or it "
                                                                "outlived monitor.retrain.lease_s)")
        blocked = _gates(spec, ledger, time.time())  # again, now that no one else can start one
        if blocked:
            return RetrainOutcome(status="skipped", reason=blocked, trigger=trigger.reason)
        reg = Registry.for_spec(spec)
        parent = reg.alias("champion")
        entry = ledger.start(attempt, trigger, parent)
        return _run(spec, trigger, entry, ledger, reg, parent, address, progress, swap)
    finally:
        lease.release()


def _run(spec: Any, trigger: Trigger, entry: dict[str, Any], ledger: Ledger, reg: Any, parent: int | None,
         address: str | None, progress: Any, swap: bool) -> RetrainOutcome:
    from raypipe.errors import GateFailed
    from raypipe.register.mlflow import check_available
    from raypipe.runner import Runner
    from raypipe.runtime import connect_for

    out = RetrainOutcome(status="failed", reason="", trigger=trigger.reason, parent=parent, attempt=entry["id"])
    try:
        connect_for(spec, address)
        fresh, rows = fresh_spec(spec, entry["id"])
        check_available(fresh)
        runner = Runner(fresh, address=address, progress=progress,
                        trigger={"kind": trigger.kind, "reason": trigger.reason, "parent_champion": parent,
                                 "attempt": entry["id"], "fresh_rows": rows})
    except NotEnoughData as e:
        out.status, out.reason = "skipped", str(e)
        ledger.finish(entry, status="skipped", reason=out.reason)
        return out
    except Exception as e:  # noqa: BLE001 - recorded; the cooldown keeps it from looping
        out.reason = f"{type(e).__name__}: {e}"
        ledger.finish(entry, status="failed", reason=out.reason)
        return out
    out.run_id = runner.run_id
    try:
        result = runner.run()
    except GateFailed as e:
        out.status, out.version, out.detail = "rejected", e.version, list(e.failures)
        out.reason = f"the gate rejected version {e.version}: " + "; ".join(e.failures)
        reg.record("retrain", verdict="rejected", candidate=e.version, previous=parent, reason=trigger.reason,
                   run_id=out.run_id, attempt=entry["id"], detail=out.reason)
        ledger.finish(entry, status="rejected", run_id=out.run_id, version=e.version, reason=out.reason)
        return out
    except Exception as e:  # noqa: BLE001 - a failed retrain is recorded, and the cooldown keeps it from looping
        out.reason = f"{type(e).__name__}: {e}"
        ledger.finish(entry, status="failed", run_id=out.run_id, reason=out.reason)
        return out
    out.version = result.version
    if spec.monitor.retrain.promote == "canary" and result.alias == "challenger":
        out.status = "canary"
        out.reason = (f"version {result.version} passed the gate and serves {canary_percent(spec):g} % of the "
                      f"requests beside champion {parent}; judged after monitor.retrain.canary_window_s")
        reg.record("retrain", verdict="canary", candidate=result.version, previous=parent, reason=trigger.reason,
                   run_id=out.run_id, attempt=entry["id"], metrics=result.metrics)
        if swap:
            out.endpoint = _swap(with_canary(spec, True), address)
        ledger.finish(entry, status="canary", run_id=out.run_id, version=out.version, reason=out.reason,
                      canary_started=time.time(), endpoint=out.endpoint)
        return out
    out.promoted = result.alias == "champion" and result.version != parent
    out.status = "promoted" if out.promoted else "rejected"
    out.reason = (f"version {result.version} replaced champion {parent}" if out.promoted
                  else f"version {result.version} was not promoted (the champion stays {parent})")
    reg.record("retrain", verdict="promoted" if out.promoted else "not promoted", candidate=result.version,
               previous=parent, reason=trigger.reason, run_id=out.run_id, attempt=entry["id"],
               metrics=result.metrics)
    if out.promoted and swap:
        out.endpoint = _swap(spec, address)
    ledger.finish(entry, status=out.status, run_id=out.run_id, version=out.version, promoted=out.promoted,
                  reason=out.reason, endpoint=out.endpoint)
    return out


# --- the canary ------------------------------------------------------------------------------
def canary_percent(spec: Any) -> float:
    return spec.deploy.canary.percent if spec.deploy.canary is not None else 10.0


def with_canary(spec: Any, on: bool) -> Any:
    """The spec deployed with the candidate as a canary (alias challenger), or without any."""
    from raypipe.spec import load_spec

    data = spec.model_dump(mode="json", by_alias=True)
    data["deploy"]["canary"] = {"alias": "challenger", "percent": canary_percent(spec)} if on else None
    data["deploy"]["shadow"] = False if not on else data["deploy"].get("shadow", False)
    return load_spec(data)


def _live_metric(report: Any, metric: str, min_labels: int) -> float | None:
    perf = report.performance or {}
    if perf.get("kind") != "measured" or int(perf.get("rows", 0)) < min_labels:
        return None
    value = (perf.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def settle_canary(spec: Any, *, now: float | None = None, address: str | None = None,
                  swap: bool = True) -> RetrainOutcome | None:
    """Judge the canary a retrain left (``promote: canary``), once its window has passed.

    The log since the canary started is checked version by version; each version's metric
    (``vs_champion_metric``, the task's main one by default) measured on its labelled requests
    decides: the canary becomes champion when it is at least the champion's + ``min_delta``,
    else it is rolled back. Either way the endpoint is redeployed without a canary. Returns None
    when no canary is pending, or while it is still being watched (too early, too few labels).
    """
    from raypipe.monitor.logwindow import check_log_window, references_for
    from raypipe.registry import Registry
    from raypipe.runtime import connect_for

    cfg = spec.monitor.retrain
    store = Store(spec.storage).sub("monitor", spec.name, "retrain")
    ledger = Ledger(store)
    pending = [e for e in ledger.entries() if e.get("status") == "canary"]
    if not pending:
        return None
    entry = pending[-1]
    now = time.time() if now is None else now
    started = float(entry["canary_started"])
    if now - started < cfg.canary_window_s:
        return None
    reg = Registry.for_spec(spec)
    connect_for(spec, address)
    start = datetime.fromtimestamp(started, timezone.utc)
    check = check_log_window(spec, references_for(spec, reg), start, datetime.fromtimestamp(now, timezone.utc))
    metric = compared_metric(spec)
    by_version = {r.version: _live_metric(r, metric, cfg.canary_min_labels) for r in check.reports}
    cand, champ = by_version.get(entry["version"]), by_version.get(entry["parent"])
    out = RetrainOutcome(status="", reason="", trigger=entry["reason"], run_id=entry.get("run_id"),
                         version=entry["version"], parent=entry["parent"], attempt=entry["id"])
    if cand is None or champ is None:
        if now - started < cfg.canary_timeout_s:
            return None
        out.status = "rolled_back"
        out.reason = (f"canary version {entry['version']}: fewer than {cfg.canary_min_labels} labelled requests per "
                      f"version after {now - started:.0f} s (monitor.retrain.canary_timeout_s)")
    elif cand >= champ + cfg.min_delta:
        out.status, out.promoted = "promoted", True
        out.reason = (f"canary version {entry['version']} {metric} {cand:.4f} >= champion {entry['parent']} "
                      f"{champ:.4f} + {cfg.min_delta:g} on live labelled requests")
        reg.set_alias("champion", entry["version"], reason=out.reason)
    else:
        out.status = "rolled_back"
        out.reason = (f"canary version {entry['version']} {metric} {cand:.4f} < champion {entry['parent']} "
                      f"{champ:.4f} + {cfg.min_delta:g} on live labelled requests")
    reg.record("canary", verdict=out.status, candidate=entry["version"], previous=entry["parent"], reason=out.reason,
               run_id=entry.get("run_id"), attempt=entry["id"], live={str(k): v for k, v in by_version.items()})
    if swap:
        out.endpoint = _swap(with_canary(spec, False), address)
    ledger.finish(entry, status=out.status, promoted=out.promoted, reason=out.reason, endpoint=out.endpoint,
                  live={str(k): v for k, v in by_version.items()})
    return out


def _swap(spec: Any, address: str | None) -> str | None:
    """Serve the new champion where the endpoint runs (in place, no restart); None when none runs."""
    from ray import serve

    from raypipe.serve.deploy import deploy

    try:
        running = spec.name in serve.status().applications
    except Exception:  # noqa: BLE001 - no Serve on this Ray: nothing to swap
        return None
    if not running:
        return None
    return deploy(spec, address=address).url
