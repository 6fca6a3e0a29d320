"""Torch training in one Ray task (``train.distributed``): the path chosen, its checkpoints, its restarts.

Faults are triggered by what is on disk, not by sleeps: a watcher waits for the complete
checkpoint of an epoch in the stage's work folder, then SIGKILLs the process that wrote it
(its pid is in the checkpoint's ``meta.json``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.spec import TrainSection
from raypipe.store import MARKER
from raypipe.train.local import DISTRIBUTED, SINGLE, choose_path
from tests.conftest import small_spec

EPOCHS = 30


def _spec(storage: Path, name: str = "t-local", **train):
    return raypipe.load_spec(_spec_dict(storage, name, **train))


def _spec_dict(storage: Path, name: str, **train) -> dict:
    return small_spec(storage, name=name, rows=4000, model={"kind": "torch.mlp", "params": {"hidden": [32, 16]}},
                      train={"workers": 2, "epochs": EPOCHS, "batch_size": 64, "lr": 0.005, "early_stopping": None,
                             **train})


def _report(result) -> dict:
    return result.outputs["train"].store.read_json("train_report.json")


class KillAtCheckpoint(threading.Thread):
    """SIGKILLs the process that wrote the complete checkpoint of ``epoch`` under ``storage``, once."""

    def __init__(self, storage: Path, epoch: int = 2, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.storage, self.epoch, self.timeout = storage, epoch, timeout
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            for ckpt in self.storage.glob(f"work/train/*/single/epoch_{self.epoch:06d}"):
                if (ckpt / MARKER).exists():
                    meta = json.loads((ckpt / "meta.json").read_text())
                    os.kill(meta["pid"], signal.SIGKILL)
                    self.killed = meta
                    return
            time.sleep(0.02)


def test_auto_chooses_one_process_without_gpu_for_data_that_fits():
    t = TrainSection()
    assert choose_path(t, 10_000, 20)[0] == SINGLE
    assert choose_path(TrainSection(local_max_mb=1), 100_000, 20)[0] == DISTRIBUTED  # 7.6 MB > 1 MB
    assert choose_path(TrainSection(use_gpu=True), 100, 2)[0] == DISTRIBUTED
    assert choose_path(TrainSection(distributed="always"), 100, 2)[0] == DISTRIBUTED
    path, why = choose_path(TrainSection(distributed="never", local_max_mb=0), 10**8, 50)
    assert path == SINGLE and "never" in why
    with pytest.raises(ValueError, match="distributed to 'auto' or 'always'"):
        TrainSection(distributed="never", use_gpu=True)


@pytest.fixture(scope="module")
def calm(ray_session, tmp_path_factory):
    """An undisturbed single-process run: the reference the disturbed runs are held against."""
    storage = tmp_path_factory.mktemp("calm") / "store"
    return storage, raypipe.run(_spec(storage), progress=Progress(quiet=True))


def test_one_process_trains_checkpoints_and_reports_its_path(calm):
    storage, result = calm
    report = _report(result)
    assert report["path"] == SINGLE and "fit one process" in report["path_reason"]
    assert report["process"]["pid"] != os.getpid() and report["process"]["threads"] == 2
    assert report["ddp"] is None and report["resumes"] == []
    assert [h["epoch"] for h in report["history"]] == list(range(EPOCHS))
    # The plan of the distributed path: 2 workers x 64 rows a step.
    assert report["process"]["batch_rows"] == 128 and report["plan"]["workers"] == 2
    ckpts = sorted(Path(report["checkpoints"]).glob("epoch_*"))
    assert [c.name for c in ckpts] == [f"epoch_{EPOCHS - 2:06d}", f"epoch_{EPOCHS - 1:06d}"]  # the newest two
    assert all((c / MARKER).exists() for c in ckpts)
    assert result.status == "ok" and result.metrics["roc_auc"] > 0.75


def test_same_seed_same_result_on_this_path(calm, tmp_path):
    _, first = calm
    again = raypipe.run(_spec(tmp_path / "store"), progress=Progress(quiet=True))
    a, b = _report(first)["history"], _report(again)["history"]
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]
    assert [h["val_loss"] for h in a] == [h["val_loss"] for h in b]
    weights = "model/model.safetensors"
    assert first.outputs["train"].store.read_bytes(weights) == again.outputs["train"].store.read_bytes(weights)


def test_killed_task_resumes_from_its_last_complete_checkpoint(calm, tmp_path):
    killer = KillAtCheckpoint(tmp_path / "store")
    killer.start()
    try:
        result = raypipe.run(_spec(tmp_path / "store", max_failures=1), progress=Progress(quiet=True))
    finally:
        killer.stop.set()
    assert killer.killed is not None, "the fault was never injected"
    report = _report(result)
    (resume,) = report["resumes"]
    # At least the checkpoint the watcher saw; later ones only if the process wrote them before the signal landed.
    assert resume["from_checkpoint_epoch"] >= killer.killed["epoch"]
    assert resume["first_epoch"] == resume["from_checkpoint_epoch"] + 1
    assert [h["epoch"] for h in report["history"]] == list(range(EPOCHS))
    assert report["process"]["pid"] != killer.killed["pid"]
    # Weights, optimiser, schedule and each epoch's shuffle are restored: the run ends where the calm one did.
    reference = _report(calm[1])["history"]
    assert [h["train_loss"] for h in report["history"]] == pytest.approx([h["train_loss"] for h in reference], rel=1e-6)


def test_rerun_after_a_driver_crash_resumes_the_train_stage(ray_session, tmp_path):
    storage = tmp_path / "store"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(_spec_dict(storage, "t-crash")))
    address = ray_session.get_runtime_context().gcs_address
    code = ("import json, sys, raypipe; from raypipe.progress import Progress; "
            "raypipe.run(json.load(open(sys.argv[1])), address=sys.argv[2], progress=Progress(quiet=True))")
    driver = subprocess.Popen([sys.executable, "-c", code, str(spec_file), address], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        seen = []
        while not seen and driver.poll() is None and time.monotonic() < deadline:
            seen = [c for c in storage.glob("work/train/*/single/epoch_000002") if (c / MARKER).exists()]
            time.sleep(0.02)
        assert seen, f"no checkpoint of epoch 2 before the driver ended: {driver.stderr.read()[-2000:] if driver.poll() is not None else ''}"
        driver.kill()  # the driver dies mid-train; its task goes with it
    finally:
        driver.kill()
        driver.wait()
    result = raypipe.run(_spec(storage, name="t-crash"), progress=Progress(quiet=True))
    stages = {s["name"]: s["status"] for s in result.stages}
    assert stages["ingest"] == stages["validate"] == stages["features"] == "cached" and stages["train"] == "ran"
    (resume,) = _report(result)["resumes"]
    assert resume["from_checkpoint_epoch"] >= 2  # not epoch 0: the crashed run's checkpoints were kept
    assert [h["epoch"] for h in _report(result)["history"]] == list(range(EPOCHS))
