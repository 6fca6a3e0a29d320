"""The validate stage on real files: quarantine keeps and counts bad rows, fail lists every problem."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.datasets import read_parquet
from raypipe.errors import DataValidationError
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.progress import Progress
from tests.conftest import small_spec

BAD_AMOUNT, NO_TARGET = 7, 5


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    df = generate_transactions(3000, seed=11)
    df["amount"] = df["amount"].astype(object)
    df.loc[df.index[:BAD_AMOUNT], "amount"] = "twelve"  # not a number
    df["is_fraud"] = df["is_fraud"].astype("Int64")
    df.loc[df.index[100 : 100 + NO_TARGET], "is_fraud"] = pd.NA
    path = tmp_path_factory.mktemp("csv") / "tx.csv"
    df.to_csv(path, index=False)
    return path


def _spec(tmp_path, csv_path, mode):
    return small_spec(tmp_path / "store", name=f"t-val-{mode}", data={
        "source": {"type": "csv", "path": str(csv_path)}, "target": "is_fraud", "id_columns": ["transaction_id"]},
        validate={"on_invalid_rows": mode, "schema": str(tmp_path / "schema.json")})


@pytest.fixture
def schema_file(tmp_path):
    """A schema that says amount is a number (as a first clean run would have inferred)."""
    import json

    from raypipe.schema import infer_schema
    import pyarrow as pa

    clean = pa.Table.from_pandas(generate_transactions(100, seed=1), preserve_index=False)
    schema = infer_schema(clean.schema, target="is_fraud", task="classification", id_columns=["transaction_id"])
    (tmp_path / "schema.json").write_text(json.dumps(schema))


def test_quarantine_keeps_counts_and_explains_every_bad_row(ray_session, tmp_path, csv_path, schema_file):
    result = raypipe.run(_spec(tmp_path, csv_path, "quarantine"), until="validate", progress=Progress(quiet=True))
    out = result.outputs["validate"]
    counts = out.outputs.counts
    total_in = sum(c["input"] for c in counts.values())
    assert total_in == 3000
    assert sum(c["valid"] + c["quarantined"] for c in counts.values()) == total_in
    assert out.outputs.quarantined == BAD_AMOUNT + NO_TARGET
    quarantined = pd.concat(
        read_parquet(out.store, f"quarantine/{s}").to_pandas() for s, c in counts.items() if c["quarantined"]
    )
    reasons = quarantined["__reason"].value_counts().to_dict()
    assert reasons == {"amount: not a number: 'twelve'": BAD_AMOUNT, "is_fraud: target is missing": NO_TARGET}
    valid = pd.concat(read_parquet(out.store, f"valid/{s}").to_pandas() for s in counts)
    assert len(valid) == 3000 - BAD_AMOUNT - NO_TARGET
    assert np.isfinite(pd.to_numeric(valid["amount"])).all()
    report = out.store.read_json("report.json")
    assert sum(r["quarantined"] for r in report["splits"].values()) == BAD_AMOUNT + NO_TARGET


def test_fail_mode_lists_every_problem_at_once(ray_session, tmp_path, csv_path, schema_file):
    with pytest.raises(DataValidationError) as info:
        raypipe.run(_spec(tmp_path, csv_path, "fail"), until="validate", progress=Progress(quiet=True))
    problems = "\n".join(info.value.problems)
    assert info.value.exit_code == 3
    assert "amount: not a number" in problems and "target is missing" in problems
    assert "'twelve'" in problems  # examples of the offending values


def test_missing_column_and_too_many_nulls_fail_even_in_quarantine_mode(ray_session, tmp_path):
    df = generate_transactions(2000, seed=5).drop(columns=["country"])
    df.loc[df.index[:1500], "customer_age"] = np.nan
    path = tmp_path / "tx.parquet"
    df.to_parquet(path)
    import json

    import pyarrow as pa

    from raypipe.schema import infer_schema

    schema = infer_schema(pa.Table.from_pandas(generate_transactions(100, seed=1), preserve_index=False).schema,
                          target="is_fraud", task="classification", id_columns=["transaction_id"])
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    spec = small_spec(tmp_path / "store", name="t-val-cols", data={
        "source": {"type": "parquet", "path": str(path)}, "target": "is_fraud", "id_columns": ["transaction_id"]},
        validate={"schema": str(tmp_path / "schema.json"), "max_missing_fraction": 0.3})
    with pytest.raises(DataValidationError) as info:
        raypipe.run(spec, until="validate", progress=Progress(quiet=True))
    problems = "\n".join(info.value.problems)
    assert "column 'country' is missing" in problems
    assert "column 'customer_age'" in problems and "max_missing_fraction=0.3" in problems


# --- mixed bad rows, schema-file limits, outputs, report ---------------------------------------------
MIXED = {"amount: not a number": 4, "amount: infinite value": 3, "is_fraud: target is missing": 5,
         "customer_age: below the schema minimum 18": 6, "customer_age: above the schema maximum 100": 2,
         "country: value not among the schema's allowed values": None}  # None: counted from the data


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory):
    """Rows with one problem each (disjoint rows), and a schema file declaring limits."""
    import json

    import pyarrow as pa

    from raypipe.schema import infer_schema

    df = generate_transactions(3000, seed=12)
    clean = infer_schema(pa.Table.from_pandas(df, preserve_index=False).schema, target="is_fraud",
                         task="classification", id_columns=["transaction_id"])
    df["amount"] = df["amount"].astype(object)
    df.loc[df.index[0:4], "amount"] = "12 EUR"
    df.loc[df.index[4:7], "amount"] = "inf"
    df["is_fraud"] = df["is_fraud"].astype("Int64")
    df.loc[df.index[10:15], "is_fraud"] = pd.NA
    df.loc[df.index[20:26], "customer_age"] = 5.0
    df.loc[df.index[30:32], "customer_age"] = 150.0
    rest = df.index[40:]
    counts = dict(MIXED, **{"country: value not among the schema's allowed values": int((df.loc[rest, "country"] == "RU").sum())})
    df.loc[df.index[:40], "country"] = "US"
    clean["columns"]["customer_age"].update(min=18, max=100)
    clean["columns"]["country"]["values"] = sorted(set(df["country"]) - {"RU"})
    folder = tmp_path_factory.mktemp("mixed")
    df.to_csv(folder / "tx.csv", index=False)
    (folder / "schema.json").write_text(json.dumps(clean))
    return folder, counts


def report_reasons(out) -> dict:
    report = out.store.read_json("report.json")
    total: dict = {}
    for r in report["splits"].values():
        for k, n in r["reasons"].items():
            total[k] = total.get(k, 0) + n
    return total


def _mixed_spec(tmp_path, folder, mode, **validate):
    return small_spec(tmp_path / "store", name=f"t-mixed-{mode}", data={
        "source": {"type": "csv", "path": str(folder / "tx.csv")}, "target": "is_fraud",
        "id_columns": ["transaction_id"]},
        validate={"on_invalid_rows": mode, "schema": str(folder / "schema.json"), **validate})


def test_quarantine_invariant_with_mixed_bad_rows(ray_session, tmp_path, mixed_csv):
    folder, expected = mixed_csv
    result = raypipe.run(_mixed_spec(tmp_path, folder, "quarantine"), until="validate", progress=Progress(quiet=True))
    out = result.outputs["validate"]
    counts = out.outputs.counts
    for split, c in counts.items():
        assert c["valid"] + c["quarantined"] == c["input"], split
    assert sum(c["input"] for c in counts.values()) == 3000
    assert out.outputs.quarantined == sum(expected.values())
    quarantined = pd.concat(read_parquet(out.store, f"quarantine/{s}").to_pandas()
                            for s, c in counts.items() if c["quarantined"])
    with_values = {("amount: not a number: '12 EUR'" if k == "amount: not a number" else k): n for k, n in expected.items()}
    assert quarantined["__reason"].value_counts().to_dict() == with_values  # the reason names the value
    assert report_reasons(out) == expected  # the report counts by reason, the values are its examples
    valid = pd.concat(read_parquet(out.store, f"valid/{s}").to_pandas() for s in counts)
    assert len(valid) + len(quarantined) == 3000
    assert pd.api.types.is_float_dtype(valid["amount"]) and np.isfinite(valid["amount"].to_numpy(dtype=float)).all()
    assert valid["customer_age"].dropna().between(18, 100).all() and "RU" not in set(valid["country"])
    assert "__reason" not in valid.columns and "__stats" not in valid.columns
    report = out.store.read_json("report.json")
    assert {s: r["quarantined"] for s, r in report["splits"].items()} == {s: c["quarantined"] for s, c in counts.items()}
    assert report["status"] == "passed" and report["profile"]["rows"] == counts["train"]["valid"]
    assert out.outputs.report_html == "report.html" and out.store.exists("report.html")
    assert isinstance(out.outputs.warnings, list)
    assert out.outputs.reference == "written"  # a schema file is stored as the reference schema too


def test_fail_mode_lists_rows_and_columns_in_one_error_with_exit_code_3(ray_session, tmp_path, mixed_csv):
    import json

    import yaml

    from raypipe.cli import main

    folder, expected = mixed_csv
    schema = json.loads((folder / "schema.json").read_text())
    schema["columns"]["loyalty_tier"] = {"type": "string", "nullable": True}  # a column the data lacks
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    spec = _mixed_spec(tmp_path, folder, "fail")
    spec["validate"]["schema"] = str(tmp_path / "schema.json")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DataValidationError) as info:
        raypipe.run(spec, until="validate", progress=Progress(quiet=True))
    problems = "\n".join(info.value.problems)
    assert "column 'loyalty_tier' is missing" in problems
    for reason in expected:
        assert reason in problems, reason
    assert "'12 EUR'" in problems
    with pytest.raises(SystemExit) as cli:
        main(["run", str(path), "--until", "validate", "--force", "validate"])
    assert cli.value.code == 3


# --- image and text columns through the Ray pass ---------------------------------------------------------
def test_image_and_text_columns_in_one_pass(ray_session, tmp_path):
    import ray.data

    from raypipe.store import Store
    from raypipe.schema import infer_schema
    from raypipe.validate.stage import Inputs, _check_splits

    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 255, (4, 4), dtype=np.uint8), "review": f"text {i}" if i % 10 else "",
              "label": str(i % 3)} for i in range(300)]
    for i in (5, 77, 150):
        items[i]["image"] = np.zeros((5, 4), dtype=np.uint8)  # the wrong shape (row 150 also has an empty review)
    ds = ray.data.from_items(items, override_num_blocks=6)
    schema = infer_schema(ds.schema().base_schema, target="label", task="classification", id_columns=[],
                          text_columns=["review"])
    assert schema["columns"]["image"]["type"] == "image" and schema["columns"]["review"]["type"] == "text"
    schema["columns"]["image"]["shape"] = [4, 4]  # variable-shaped data: the shape a schema file declares
    ds.write_parquet(str(tmp_path / "in" / "train"))  # as ingest leaves a split: parquet files, one task each
    artifact = Store(tmp_path / "artifact")
    check = _check_splits(["train"], Inputs(Store(tmp_path / "in"), {"train": "train"}, small=False), schema, None, {},
                          artifact)["train"]
    assert check.counts == {"input": 300, "valid": 297, "quarantined": 3}
    assert check.stats["reasons"] == {"image: image of the wrong shape (expected 4x4)": 3}
    img, text = check.profile["columns"]["image"], check.profile["columns"]["review"]
    assert img["shape"] == [4, 4] and img["shapes"] == {"4x4": 297} and 0 < img["pixel_mean"] < 255
    assert text["empty"] == 29 and text["length"]["max"] == len("text 299")
    assert check.profile["duplicates"] == 0  # images count in the row hash
    valid = read_parquet(artifact, "valid/train").to_pandas()  # written by the same pass
    bad = read_parquet(artifact, "quarantine/train").to_pandas()
    assert len(valid) == 297 and len(bad) == 3
    assert {np.shape(v) for v in valid["image"]} == {(4, 4)}
    assert set(bad["__reason"]) == {"image: image of the wrong shape (expected 4x4)"}


# --- a class the training split never saw ------------------------------------------------------------
def test_class_only_outside_train_is_quarantined_after_a_second_look(ray_session, tmp_path):
    """All splits are checked in one pass without the training classes; a split holding an unseen
    class is checked again, and its first-pass files are replaced, not added to."""
    from raypipe.columns import row_uniform
    from raypipe.ingest.split import _bounds

    rng = np.random.default_rng(5)
    df = pd.DataFrame({"x1": rng.normal(size=600), "x2": rng.normal(size=600),
                       "c": rng.choice(["a", "b", "c"], size=600), "y": rng.integers(0, 2, size=600)})
    for i in range(len(df)):  # a row that lands in test with the new label 7 (the label is part of the row hash)
        trial = df.copy()
        trial.loc[i, "y"] = 7
        u = row_uniform(trial, 0)
        if u[i] < _bounds(np.sort(u), 0.2, 0.1)[0]:
            df = trial
            break
    (tmp_path / "data").mkdir()
    df.to_parquet(tmp_path / "data" / "d.parquet", index=False)
    spec = small_spec(tmp_path / "store", name="t-unseen-class", data={
        "source": {"type": "parquet", "path": str(tmp_path / "data")}, "target": "y",
        "split": {"stratify": False, "seed": 0}, "id_columns": []}, validate={"reference": "none"})
    out = raypipe.run(spec, until="validate", progress=Progress(quiet=True)).outputs["validate"]
    counts = out.outputs.counts
    assert counts["test"]["quarantined"] == 1 and out.outputs.quarantined == 1
    bad = read_parquet(out.store, "quarantine/test").to_pandas()
    assert bad["__reason"].tolist() == ["y: class not seen in the training split"] and bad["y"].tolist() == [7]
    valid = {s: read_parquet(out.store, f"valid/{s}").to_pandas() for s in counts}
    assert {s: len(v) for s, v in valid.items()} == {s: c["valid"] for s, c in counts.items()}
    assert sum(len(v) for v in valid.values()) == 599 and 7 not in set(valid["test"]["y"])
