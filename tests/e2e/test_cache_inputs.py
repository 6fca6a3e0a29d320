"""What a stage's fingerprint covers beyond its spec sections: state outside the pipeline, and code.

- validate reads the stored reference: a reset (or another reference) re-runs it;
- evaluate with ``gate.vs_champion`` reads the champion: a new champion re-runs it;
- the code part covers a stage's own package and the raypipe modules it imports: an
  edit to serving leaves every stage cached, an edit to ``features/`` re-runs features onward.
Each case also checks the run after it is all cached (the state a run wrote itself is no change).
"""
from __future__ import annotations

import shutil

import pytest

import raypipe
import raypipe.lineage
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.store import Store
from raypipe.validate.reference import reset_reference
from tests.conftest import small_spec, statuses

ALL = ["ingest", "validate", "features", "train", "evaluate", "register"]
quiet = Progress(quiet=True)
CHAMPION_GATE = {"gate": {"min": {"roc_auc": 0.6}, "vs_champion": {"metric": "roc_auc", "min_delta": -1.0}}}


def cached_through(result, last: str) -> dict:
    """Expected statuses: cached up to ``last`` (exclusive), ran from it on."""
    i = ALL.index(last)
    return {s: "cached" if ALL.index(s) < i else "ran" for s in statuses(result)}


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("cache-inputs") / "store"


@pytest.fixture(scope="module")
def first(ray_session, storage):
    result = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(result) == {s: "ran" for s in ALL}
    again = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(again) == {s: "cached" for s in ALL}, "the reference and champion a run wrote are no change"
    return result


def test_a_reset_reference_reruns_validate_then_stays_cached(first, storage):
    assert reset_reference(Store(str(storage)), "t-fraud")
    result = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(result)["ingest"] == "cached" and statuses(result)["validate"] == "ran"
    assert result.outputs["validate"].outputs.reference == "written"  # the reset reference is written again
    again = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(again) == {s: "cached" for s in ALL}


def test_a_new_champion_reruns_evaluate_then_stays_cached(first, storage):
    reg = Registry(str(storage), "t-fraud")
    before = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(before) == {s: "cached" for s in ALL}
    vs = reg.version_store(reg.alias("champion"))
    files = {f: vs.read_bytes(f) for f in vs.walk_files() if not f.startswith("_")}
    other = reg.register(files, status="ready", meta={"threshold": 0.5})
    reg.set_alias("champion", other, reason="a model from elsewhere")
    result = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(result) == cached_through(result, "evaluate")
    doc = result.outputs["evaluate"].read_json("metrics.json")
    assert doc["champion"]["version"] == other  # it compared with the new champion
    again = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    assert statuses(again) == {s: "cached" for s in ALL}


def test_without_vs_champion_a_new_champion_changes_nothing(ray_session, tmp_path):
    spec = small_spec(tmp_path / "store", name="t-plain")
    raypipe.run(spec, progress=quiet)
    reg = Registry(str(tmp_path / "store"), "t-plain")
    vs = reg.version_store(1)
    other = reg.register({f: vs.read_bytes(f) for f in vs.walk_files() if not f.startswith("_")}, status="ready")
    reg.set_alias("champion", other, reason="test")
    assert statuses(raypipe.run(spec, progress=quiet)) == {s: "cached" for s in ALL}


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of raypipe's source that the code fingerprints read (the running code is unchanged)."""
    copy = tmp_path / "raypipe"
    shutil.copytree(raypipe.lineage.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(raypipe.lineage, "ROOT", copy)
    raypipe.lineage.code_hash.cache_clear()
    yield copy
    raypipe.lineage.code_hash.cache_clear()


@pytest.mark.parametrize("edited, first_rerun", [
    ("serve/app.py", None), ("cli.py", None), ("export/onnx_model.py", None),
    ("features/stage.py", "features"), ("model/features/numeric.py", "features"),
    ("validate/checks.py", "validate"), ("columns.py", "ingest"), ("train/loop.py", "train"),
])
def test_code_edits_rerun_the_stages_whose_code_changed(first, storage, source_copy, edited, first_rerun):
    path = source_copy / edited
    path.write_text(path.read_text() + "\n# an edit\n")
    result = raypipe.run(small_spec(storage, evaluate=CHAMPION_GATE), progress=quiet)
    expected = {s: "cached" for s in ALL} if first_rerun is None else cached_through(result, first_rerun)
    assert statuses(result) == expected
