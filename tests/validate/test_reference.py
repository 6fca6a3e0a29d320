"""The stored reference on real pipeline runs: written by the first run, later data compared with it."""
from __future__ import annotations

import json

import numpy as np
import pytest

import raypipe
from raypipe.errors import DataValidationError
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.progress import Progress
from raypipe.store import Store
from raypipe.validate.reference import load_reference, reset_reference
from tests.conftest import small_spec

quiet = Progress(quiet=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The first data set and changed ones, as parquet files."""
    folder = tmp_path_factory.mktemp("ref-data")
    base = generate_transactions(3000, seed=21)
    base.to_parquet(folder / "base.parquet")
    drift = generate_transactions(3000, seed=22)
    rng = np.random.default_rng(0)
    new = rng.random(len(drift)) < 0.3
    drift.loc[new, "country"] = rng.choice(["ZZ", "QQ"], int(new.sum()))  # categories the reference never saw
    drift["amount"] = drift["amount"] + 100_000.0  # a shifted range
    drift["promo"] = "spring"  # a column the reference does not have
    drift.to_parquet(folder / "drift.parquet")
    generate_transactions(3000, seed=23).drop(columns=["device"]).to_parquet(folder / "dropped.parquet")
    return folder


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("ref-store") / "store"


def spec(storage, path, **validate):
    return small_spec(storage, name="t-ref", data={"source": {"type": "parquet", "path": str(path)},
                                                   "target": "is_fraud", "id_columns": ["transaction_id"]},
                      validate=validate)


@pytest.fixture(scope="module")
def first(ray_session, storage, files):
    return raypipe.run(spec(storage, files / "base.parquet"), until="validate", progress=quiet)


def _checks(report, severity):
    return {(f["check"], f["column"]) for f in report["findings"] if f["severity"] == severity}


def test_first_run_writes_the_reference(first, storage):
    out = first.outputs["validate"].outputs
    assert out.reference == "written" and out.warnings == []
    ref = load_reference(Store(str(storage)), "t-ref")
    assert ref is not None
    assert ref["schema"]["columns"] == first.outputs["validate"].store.read_json("schema.json")["columns"]
    assert ref["profile"]["rows"] == out.counts["train"]["valid"]
    assert set(ref["profile"]["columns"]["country"]["values"]) >= {"US", "CA"}


def test_changed_data_gives_warnings_with_the_right_severity(first, storage, files):
    result = raypipe.run(spec(storage, files / "drift.parquet"), until="validate", progress=quiet)
    out = result.outputs["validate"]
    assert out.outputs.reference == "checked"
    report = out.store.read_json("report.json")
    warnings = _checks(report, "warning")
    assert ("unseen_values", "country") in warnings
    assert ("out_of_range", "amount") in warnings
    assert ("extra_column", "promo") in warnings
    assert _checks(report, "error") == set()
    unseen = next(f for f in report["findings"] if f["check"] == "unseen_values" and f["split"] == "train")
    assert unseen["value"] == pytest.approx(0.3, abs=0.05) and unseen["limit"] == 0.01
    assert "'country'" in unseen["message"] and "max_unseen_fraction=0.01" in unseen["message"]
    assert "ZZ" in unseen["message"] or "QQ" in unseen["message"]
    assert any("'amount'" in w and "outside the reference range" in w for w in out.outputs.warnings)
    schema = out.store.read_json("schema.json")
    assert "promo" not in schema["columns"]  # the reference schema is used, not a new inferred one
    assert schema["columns"] == load_reference(Store(str(storage)), "t-ref")["schema"]["columns"]


def test_strict_turns_the_warnings_into_one_error(first, storage, files):
    with pytest.raises(DataValidationError) as info:
        raypipe.run(spec(storage, files / "drift.parquet", strict=True), until="validate", progress=quiet)
    problems = "\n".join(info.value.problems)
    assert info.value.exit_code == 3
    assert "never seen in the reference" in problems and "outside the reference range" in problems
    assert "'promo'" in problems and "validate.strict" in problems


def test_dropped_column_is_an_error(first, storage, files):
    with pytest.raises(DataValidationError) as info:
        raypipe.run(spec(storage, files / "dropped.parquet"), until="validate", progress=quiet)
    assert any("column 'device' is missing" in p for p in info.value.problems)
    reports = [json.loads(p.read_text()) for p in (storage / "stages" / "validate").glob("*/report.json")]
    assert any(r["status"] == "failed" and ("missing_column", "device") in _checks(r, "error") for r in reports)


def test_each_pipeline_has_its_own_reference(first, storage, files):
    other = spec(storage, files / "dropped.parquet")
    other["name"] = "t-ref-other"
    result = raypipe.run(other, until="validate", progress=quiet)
    assert result.outputs["validate"].outputs.reference == "written"
    root = Store(str(storage))
    assert "device" not in load_reference(root, "t-ref-other")["schema"]["columns"]
    assert "device" in load_reference(root, "t-ref")["schema"]["columns"]
    assert (storage / "reference" / "t-ref" / "schema.json").exists()


def test_reference_none_ignores_the_stored_reference(first, storage, files):
    result = raypipe.run(spec(storage, files / "dropped.parquet", reference="none"), until="validate", progress=quiet)
    out = result.outputs["validate"].outputs
    assert out.reference == "off" and out.warnings == []


def test_reset_reference_lets_the_next_run_write_a_new_one(first, storage, files):
    root = Store(str(storage))
    assert reset_reference(root, "t-ref") is True
    assert load_reference(root, "t-ref") is None and reset_reference(root, "t-ref") is False
    result = raypipe.run(spec(storage, files / "drift.parquet"), until="validate", progress=quiet)
    assert result.outputs["validate"].outputs.reference == "written"
    ref = load_reference(root, "t-ref")
    assert "promo" in ref["schema"]["columns"] and ref["profile"]["columns"]["amount"]["min"] > 100_000
    assert load_reference(root, "t-ref-other") is not None  # another pipeline's reference is kept
    assert reset_reference(root) is True and load_reference(root, "t-ref-other") is None
