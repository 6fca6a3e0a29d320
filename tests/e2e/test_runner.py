"""The runner on a real local Ray: cache, partial re-runs, resume after a failure, force, gate."""
from __future__ import annotations

import json

import pytest

import raypipe
import raypipe.runner
import raypipe.runtime
import raypipe.train.stage
from raypipe.errors import GateFailed, StageFailed
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import small_spec, statuses

ALL = ["ingest", "validate", "features", "train", "evaluate", "register"]
quiet = Progress(quiet=True)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runner") / "store"


@pytest.fixture(scope="module")
def first(ray_session, storage):
    return raypipe.run(small_spec(storage), progress=quiet)


def test_first_run_runs_every_stage_and_registers_champion(first, storage):
    assert statuses(first) == {s: "ran" for s in ALL}
    assert first.version == 1 and first.status == "ok"
    assert Registry(str(storage), "t-fraud").alias("champion") == 1
    manifest = json.loads(open(first.manifest_path).read())
    assert manifest["status"] == "ok"
    assert [s["name"] for s in manifest["stages"]] == ALL
    assert all(s["seconds"] > 0 for s in manifest["stages"])
    assert manifest["versions"]["ray"] and manifest["seeds"] == {"split": 42, "train": 0}
    assert manifest["metrics"]["roc_auc"] > 0.6


def test_same_spec_twice_is_all_cached_and_runs_no_stage_code(first, storage, monkeypatch):
    resolve = raypipe.runner._resolve

    def no_stage_code(path):
        if path.endswith(":run"):
            raise AssertionError(f"stage code {path} ran on a fully cached run")
        return resolve(path)  # the data fingerprint and the external state's digests

    monkeypatch.setattr(raypipe.runner, "_resolve", no_stage_code)
    again = raypipe.run(small_spec(storage), progress=quiet)
    assert statuses(again) == {s: "cached" for s in ALL}
    assert again.version == first.version  # no new version registered
    assert again.metrics == first.metrics


def test_changing_one_section_reruns_that_stage_and_later_only(first, storage):
    spec = small_spec(storage, features={"numeric": {"impute": "mean", "scale": "minmax"}})
    result = raypipe.run(spec, progress=quiet)
    assert statuses(result) == {"ingest": "cached", "validate": "cached", "features": "ran", "train": "ran",
                                "evaluate": "ran", "register": "ran"}
    spec = small_spec(storage, evaluate={"gate": {"min": {"roc_auc": 0.55}}})
    result = raypipe.run(spec, progress=quiet)
    assert statuses(result) == {**{s: "cached" for s in ALL[:4]}, "evaluate": "ran", "register": "ran"}


def test_failed_stage_resumes_from_that_stage(first, storage, monkeypatch):
    spec = small_spec(storage, model={"params": {"max_iter": 301}})  # a train section not cached yet
    real = raypipe.train.stage.run
    monkeypatch.setattr(raypipe.train.stage, "run", lambda ctx, inputs: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(StageFailed, match="stage 'train' failed: RuntimeError: boom") as failed:
        raypipe.run(spec, progress=quiet)
    logs = raypipe.runtime.worker_logs()
    assert f"Ray workers' output: {logs} (or set ray.log_to_driver: true)" in str(failed.value)  # off the console
    monkeypatch.setattr(raypipe.train.stage, "run", real)
    resumed = raypipe.run(spec, progress=quiet)
    assert statuses(resumed) == {"ingest": "cached", "validate": "cached", "features": "cached", "train": "ran",
                                 "evaluate": "ran", "register": "ran"}


def test_force_recomputes_the_stage_and_everything_after(first, storage):
    result = raypipe.run(small_spec(storage), force="features", progress=quiet)
    assert statuses(result) == {"ingest": "cached", "validate": "cached", **{s: "ran" for s in ALL[2:]}}


def test_failed_gate_registers_rejected_version_and_keeps_champion(first, storage):
    reg = Registry(str(storage), "t-fraud")
    champion = reg.alias("champion")
    spec = small_spec(storage, evaluate={"gate": {"min": {"roc_auc": 0.999, "f1": 0.99}}})
    with pytest.raises(GateFailed) as info:
        raypipe.run(spec, progress=quiet)
    assert info.value.exit_code == 4
    assert len(info.value.failures) == 2 and "roc_auc >= 0.999" in info.value.failures[0]
    rejected = info.value.version
    assert reg.info(rejected)["status"] == "rejected"
    assert reg.alias("champion") == champion
    with pytest.raises(raypipe.RegistryError):
        reg.set_alias("champion", rejected, reason="should be refused")


def test_unknown_force_stage_is_a_spec_error(storage):
    with pytest.raises(raypipe.SpecError, match="'training' is not a stage"):
        raypipe.run(small_spec(storage), force="training", progress=quiet)
