"""Data-plane chaos: the Ray worker running ingest's or validate's block tasks is SIGKILLed mid-write.

Deterministic trigger: a watcher thread waits until the stage's first parquet part appears in
its artifact folder (``stages/ingest/<fp>/splits/__split=<s>/``, written by
``write_block_splits``; ``stages/validate/<fp>/valid|quarantine/<s>/``, written by
``check_and_write``). From then on it looks at the workers of *this* Ray (children of the
raylet whose socket name ``ray.nodes()`` reports: other Rays may run on the same host) and
SIGKILLs the first one that is executing the stage's block function and holds one of the
stage's parquet parts open, i.e. is writing it. Ray sets a worker's process title to
``ray::<task name>`` while a task runs (``ray::IDLE`` between tasks), and raypipe names its data
tasks as Ray Data names its own, after the function (``PerBlock(write_block_splits)``,
``SmallData(check_tables)``; ``PerFile(check_files)`` on large data);
``/proc/<pid>/fd`` shows the open file. So the
kill always leaves a torn part under its final name, the case where a retry must replace the
file rather than add one. No sleep decides when the fault happens. The state API, which lags by
about a second, is asked afterwards: the killed attempt failed with ``WORKER_DIED`` and a later
attempt of the same task finished.

What must hold (issue 18): the run completes (Ray Data and raypipe submit their data tasks with
``max_retries=-1``); counted from the parquet footers of the *published* artifact (the files
its ``_COMPLETE.json`` lists; no other file may sit in those folders),
valid + quarantined == rows generated, and every generated id is there exactly once (a retry
that wrote its rows under a new name would duplicate ids, a lost block would miss them, a torn
file would have no footer); afterwards every CPU of the Ray is free again.
"""
from __future__ import annotations

import json
import os
import posixpath
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.schema import infer_schema
from raypipe.store import MARKER
from tests.conftest import small_spec

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's workers through /proc")

ROWS, FILES = 200_000, 8
TARGET, ID = "label", "row_id"
# Per file, the rows validate quarantines (disjoint rows, each with one problem).
NOT_A_NUMBER, INFINITE, NO_TARGET = 3, 1, 2
REASONS = {"amount: not a number": NOT_A_NUMBER * FILES, "amount: infinite value": INFINITE * FILES,
           f"{TARGET}: target is missing": NO_TARGET * FILES}
QUARANTINED = sum(REASONS.values())
# Where each stage's block function writes, relative to the stage's artifact folder, and its name.
# Ingest writes from plain tasks on its materialised blocks (``PerBlock(write_block_splits)``); validate on
# this small export from one task (``SmallData(check_tables)``, under ``datasets.SMALL_DATA_BYTES``).
STAGE_PARTS = {"ingest": (("splits",), "write_block_splits"),
               "validate": (("valid", "quarantine"), "check_tables")}
MERCHANTS = ["Acme, Inc.", 'The "Corner" Shop', "Müller & Söhne", "7-Eleven", "Café Olé", "Smith, Jones and Co",
             "Ørsted", "北京商店", "plain"]


# --- the data: ~200k rows of a messy export in 8 CSV files ------------------------------------------
def _frame(rng: np.random.Generator, start: int, n: int) -> pd.DataFrame:
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    age = rng.integers(18, 90, n)
    score = rng.normal(0, 1, n)
    logit = 0.04 * (amount - 20) - 0.02 * (age - 50) + score
    return pd.DataFrame({
        ID: np.arange(start, start + n, dtype=np.int64),
        "amount": amount,
        "age": age,
        "score": np.round(score, 4),
        "merchant": rng.choice(MERCHANTS, n),
        "country": rng.choice(["DE", "FR", "US", "JP", "BR"], n),
        TARGET: (logit + rng.logistic(0, 1, n) > 0).astype(np.int64),
    })


def _make_messy(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Stray text and an infinity in the numeric ``amount``, empty targets: disjoint rows."""
    bad = rng.choice(len(df), NOT_A_NUMBER + INFINITE + NO_TARGET, replace=False)
    text, inf, empty = np.split(bad, [NOT_A_NUMBER, NOT_A_NUMBER + INFINITE])
    df = df.astype({"amount": object, TARGET: "Int64"})
    df.loc[df.index[text], "amount"] = rng.choice(["12,50 EUR", "see note", "1.2.3"], len(text))
    df.loc[df.index[inf], "amount"] = "inf"
    df.loc[df.index[empty], TARGET] = pd.NA
    return df


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, Path]:
    """(folder of 8 CSV files, schema file saying ``amount`` is a number), written once per module.

    Half the files have Windows line endings; merchant names hold commas, quotes and non-ASCII.
    """
    rng = np.random.default_rng(18)
    folder = tmp_path_factory.mktemp("export")
    per_file = ROWS // FILES
    for i in range(FILES):
        df = _make_messy(_frame(rng, i * per_file, per_file), rng)
        df.to_csv(folder / f"part-{i:02d}.csv", index=False, lineterminator="\r\n" if i % 2 else "\n")
    clean = pa.Table.from_pandas(_frame(rng, 0, 100), preserve_index=False)
    schema = infer_schema(clean.schema, target=TARGET, task="classification", id_columns=[ID])
    schema_file = folder.parent / "schema.json"
    schema_file.write_text(json.dumps(schema))
    return folder, schema_file


def _spec(storage: Path, export: tuple[Path, Path], name: str):
    folder, schema_file = export
    return raypipe.load_spec(small_spec(
        storage, name=name,
        data={"source": {"type": "csv", "path": str(folder)}, "target": TARGET, "id_columns": [ID]},
        validate={"schema": str(schema_file), "on_invalid_rows": "quarantine"},
        # Ray tasks, not the driver (where small data runs on a one-machine Ray): the faults here are workers dying
        ray={"small_data": "tasks"},
    ))


# --- finding and killing the worker -----------------------------------------------------------------
def _raylet_pid() -> int:
    """This session's raylet: the process started with this Ray's raylet socket name."""
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    needle = f"--raylet_socket_name={node['RayletSocketName']}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except OSError:
            continue
    raise RuntimeError("this session's raylet was not found")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (each of its threads lists the ones it started)."""
    out: list[int] = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (thread / "children").read_text().split()]
        except OSError:
            continue  # the thread ended
    return out


def _title(pid: int) -> str:
    """A process's title: Ray workers show ``ray::<task name>`` while they run a task."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        return ""


def _open_part(pid: int, folder: str) -> str | None:
    """The parquet file under ``folder`` that process ``pid`` holds open (it is writing it), if any."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(folder + "/") and target.endswith(".parquet"):
            return target
    return None


class KillBlockWorker(threading.Thread):
    """Once ``stage``'s first part is on disk, SIGKILLs a worker of its block function while it writes a part."""

    def __init__(self, storage: Path, stage: str, timeout: float = 240) -> None:
        super().__init__(daemon=True)
        self.storage, self.stage, self.timeout = storage, stage, timeout
        self.folders, self.function = STAGE_PARTS[stage]
        self.raylet = _raylet_pid()
        self.killed: dict | None = None
        self.stop = threading.Event()

    def _parts(self) -> list[Path]:
        """The stage's parquet parts on disk now."""
        return sorted(p for f in self.folders for p in self.storage.glob(f"stages/{self.stage}/*/{f}/*/*.parquet"))

    def _writing_worker(self, stage_dir: str) -> tuple[int, str, str] | None:
        """(pid, task name, part) of a worker running the block function with a part under ``stage_dir`` open."""
        for pid in _children(self.raylet):
            title = _title(pid)
            if title.startswith("ray::") and f"({self.function})" in title:
                part = _open_part(pid, stage_dir)
                if part:
                    return pid, title.removeprefix("ray::"), part
        return None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        first = None
        while not self.stop.is_set() and time.monotonic() < deadline:
            if first is None:
                parts = self._parts()
                first = parts[0] if parts else None
                time.sleep(0.02)
                continue
            stage_dir = os.path.realpath(first.parents[2])  # stages/<stage>/<fp>
            found = self._writing_worker(stage_dir)
            if found:
                pid, task, part = found
                os.kill(pid, signal.SIGKILL)
                self.killed = {"pid": pid, "task": task, "writing": os.path.relpath(part, stage_dir)}
                return
            time.sleep(0.001)


def _run_with_kill(storage: Path, export: tuple[Path, Path], stage: str, name: str):
    """Ingest and validate (``until="validate"``) with the watcher armed for ``stage``."""
    killer = KillBlockWorker(storage, stage)
    killer.start()
    try:
        result = raypipe.run(_spec(storage, export, name), until="validate", progress=Progress(quiet=True))
    finally:
        killer.stop.set()
        killer.join()
    return result, killer


# --- what is on disk ----------------------------------------------------------------------------------
def _published_parts(out, folder: str) -> list[str]:
    """Parquet files under ``folder`` that the artifact's marker lists; nothing else may be there."""
    listed = sorted(f for f in out.store.read_json(MARKER)["files"]
                    if f.startswith(folder + "/") and f.endswith(".parquet"))
    on_disk = sorted(posixpath.join(folder, f) for f in out.store.walk_files(folder))
    assert on_disk == listed, f"{folder}: files outside the published artifact: {set(on_disk) ^ set(listed)}"
    return [out.store.path(f) for f in listed]


def _without_value(reason: str) -> str:
    """A reason without the offending value it names (``amount: not a number: 'n/a'``)."""
    return "amount: not a number" if reason.startswith("amount: not a number: ") else reason


def _footer_rows(paths: list[str]) -> int:
    """Rows counted from the files' parquet footers (a torn file has none and fails here)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def _assert_every_id_once(paths: list[str]) -> None:
    """Each generated id exactly once across ``paths``: ids are unique per generated row, so distinct rows.

    Only the id column is read.
    """
    # a csv source's columns arrive as text (ingest, quarantine); validate writes the valid ids as integers
    ids = np.concatenate([pd.to_numeric(pq.read_table(p, columns=[ID])[ID].to_pandas()).to_numpy(np.int64)
                          for p in paths])
    distinct, times = np.unique(ids, return_counts=True)
    assert not (times > 1).any(), f"{int((times > 1).sum())} ids written twice, e.g. {distinct[times > 1][:5]}"
    missing = np.setdiff1d(np.arange(ROWS), distinct)
    assert len(missing) == 0 and len(distinct) == ROWS, f"{len(missing)} ids missing, e.g. {missing[:5]}"


def _killed_attempt(killed: dict, timeout: float = 20) -> tuple[dict, list[dict]]:
    """The state API's record of the killed attempt and of every attempt of that task.

    A dead worker's failed attempt carries its worker id, not its pid: the worker table maps one to the other.
    The address is explicit: without one the state API looks for Ray's processes on the host and refuses when
    another Ray runs there.
    """
    import ray
    from ray.util.state import list_tasks, list_workers

    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + timeout
    while True:
        workers = list_workers(address, filters=[("pid", "=", killed["pid"])], detail=True, raise_on_missing_output=False)
        ids = {w.worker_id for w in workers}
        tasks = list_tasks(address, filters=[("name", "=", killed["task"])], detail=True, limit=10_000,
                           raise_on_missing_output=False)
        failed = [t for t in tasks if t.worker_id in ids and t.state == "FAILED"]
        attempts = [t for t in tasks if failed and t.task_id == failed[0].task_id]
        if any(t.state == "FINISHED" for t in attempts) or time.monotonic() > deadline:
            assert failed, f"the state API has no failed attempt of {killed}"
            return vars(failed[0]), [vars(a) for a in attempts]
        time.sleep(0.5)


def _wait_cpus_free(timeout: float = 30) -> tuple[float, float]:
    """(free, total) CPUs of the Ray once all are free, or when ``timeout`` is up."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources()["CPU"]
        if free == total or time.monotonic() > deadline:
            return free, total
        time.sleep(0.5)


# --- the drills -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["ingest", "validate"])
def test_killed_block_worker_loses_and_duplicates_no_row(ray_session, tmp_path, export, stage):
    result, killer = _run_with_kill(tmp_path / "store", export, stage, f"t-chaos-{stage}")
    assert killer.killed is not None, f"the fault was never injected into {stage}"
    assert result.status == "ok"
    attempt, attempts = _killed_attempt(killer.killed)
    print(f"\n{stage}: killed {killer.killed}, task {attempt['task_id']} attempt {attempt['attempt_number']}")
    assert attempt["error_type"] == "WORKER_DIED", attempt
    assert any(a["state"] == "FINISHED" and a["attempt_number"] > attempt["attempt_number"] for a in attempts)
    # The part the killed attempt was writing is its own (task id in the name), and the retry replaced it.
    assert attempt["task_id"] in killer.killed["writing"]

    ingest = result.outputs["ingest"]
    ingest_parts = _published_parts(ingest, "splits")
    assert _footer_rows(ingest_parts) == ROWS
    _assert_every_id_once(ingest_parts)

    val = result.outputs["validate"]
    valid = [p for s in val.outputs.counts for p in _published_parts(val, f"valid/{s}")]
    quarantine = [p for s in val.outputs.counts for p in _published_parts(val, f"quarantine/{s}")]
    published = ingest_parts if stage == "ingest" else valid + quarantine
    assert os.path.join(result.outputs[stage].store.root, killer.killed["writing"]) in published
    n_valid, n_quarantined = _footer_rows(valid), _footer_rows(quarantine)
    print(f"{stage}: footers: {n_valid} valid + {n_quarantined} quarantined = {n_valid + n_quarantined} "
          f"in {len(valid)} + {len(quarantine)} files (ingest: {len(ingest_parts)} files)")
    assert n_valid + n_quarantined == ROWS
    assert n_quarantined == QUARANTINED == val.outputs.quarantined
    _assert_every_id_once(valid + quarantine)
    reasons = Counter(r for p in quarantine for r in pq.read_table(p, columns=["__reason"])["__reason"].to_pylist())
    assert Counter(_without_value(r) for r in reasons.elements()) == REASONS

    free, total = _wait_cpus_free()
    assert free == total, f"{total - free} CPU(s) still held after the run"
