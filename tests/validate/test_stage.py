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

    from raypipe.validate.schema import infer_schema
    import pyarrow as pa

    clean = pa.Table.from_pandas(generate_transactions(100, seed=1), preserve_index=False)
    schema = infer_schema(clean.schema, target="is_fraud", task="classification", id_columns=["transaction_id"])
    (tmp_path / "schema.json").write_text(json.dumps(schema))


def test_quarantine_keeps_counts_and_explains_every_bad_row(ray_session, tmp_path, csv_path, schema_file):
    result = raypipe.run(_spec(tmp_path, csv_path, "quarantine"), until="validate", progress=Progress(quiet=True))
    out = result.outputs["validate"]
    counts = out.outputs["counts"]
    total_in = sum(c["input"] for c in counts.values())
    assert total_in == 3000
    assert sum(c["valid"] + c["quarantined"] for c in counts.values()) == total_in
    assert out.outputs["quarantined"] == BAD_AMOUNT + NO_TARGET
    quarantined = pd.concat(
        read_parquet(out.store, f"quarantine/{s}").to_pandas() for s, c in counts.items() if c["quarantined"]
    )
    reasons = quarantined["__reason"].value_counts().to_dict()
    assert reasons == {"amount: not a number": BAD_AMOUNT, "is_fraud: target is missing": NO_TARGET}
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

    from raypipe.validate.schema import infer_schema

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
