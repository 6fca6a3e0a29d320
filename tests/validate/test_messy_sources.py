"""Messy csv and json sources through ingest and validate (issue 19): types by majority over every file,
missing means missing, the quarantine ceiling, the task sanity check and the row counts from the footers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

import raypipe
from raypipe.datasets import read_parquet
from raypipe.errors import ArtifactError, DataValidationError, SpecError
from raypipe.progress import Progress
from tests.conftest import small_spec

quiet = Progress(quiet=True)


def _spec(tmp_path, name, source, target="y", **sections):
    return small_spec(tmp_path / "store", name=name, data={"source": source, "target": target, "id_columns": ["id"]},
                      **sections)


def _quarantined(out) -> pd.DataFrame:
    counts = out.outputs.counts
    return pd.concat([read_parquet(out.store, f"quarantine/{s}").to_pandas() for s, c in counts.items()
                      if c["quarantined"]] or [pd.DataFrame({"__reason": []})])


def _frame(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(start, start + n), "x": x.round(5), "k": rng.integers(0, 9, n),
                         "flag": rng.choice(["yes", "no"], n), "y": np.where(x + rng.normal(0, .5, n) > 0, "a", "b")})


# --- csv: stable across files and blocks --------------------------------------------------------------
def test_csv_files_typed_by_majority_over_every_file_and_block(ray_session, tmp_path):
    """A large file whose stray value comes after pyarrow's first block (the read used to fail) and a
    small file whose first row is a stray value (pyarrow made the column text in that file only)."""
    folder = tmp_path / "csv"
    folder.mkdir()
    big = _frame(60_000, 1).astype({"x": object, "flag": object})
    big.loc[59_990, "x"] = "n/a?"
    big.loc[59_991, "flag"] = "maybe"
    big.to_csv(folder / "a-big.csv", index=False)
    assert (folder / "a-big.csv").stat().st_size > 1 << 20  # more than one of pyarrow's 1 MiB blocks
    small = _frame(50, 2, start=60_000).astype({"x": object})
    small.loc[0, "x"] = "1e999x"
    small.loc[1, "x"] = "NA"  # missing, not a bad value
    small.loc[2, "flag"] = ""
    small.to_csv(folder / "b-small.csv", index=False)

    out = raypipe.run(_spec(tmp_path, "t-csv-files", {"type": "csv", "path": str(folder)}), until="validate",
                      progress=quiet).outputs["validate"]
    schema = out.store.read_json("schema.json")
    assert {c: schema["columns"][c]["type"] for c in ("id", "x", "k", "flag", "y")} == {
        "id": "integer", "x": "number", "k": "integer", "flag": "boolean", "y": "string"}
    bad = _quarantined(out)
    assert sorted(bad["__reason"]) == ["flag: not a boolean: 'maybe'", "x: not a number: '1e999x'",
                                       "x: not a number: 'n/a?'"]
    valid = pd.concat(read_parquet(out.store, f"valid/{s}").to_pandas() for s in out.outputs.splits)
    assert len(valid) == 60_047 and valid["x"].isna().sum() == 1 and valid["flag"].isna().sum() == 1
    written = read_parquet(out.store, "valid/train").schema().base_schema  # the valid rows in their types
    assert str(written.field("x").type) == "double" and str(written.field("flag").type) == "bool"
    report = out.store.read_json("report.json")
    assert report["inference"]["x"]["unparsed"] + report["inference"]["flag"]["unparsed"] <= 3  # train's share
    html = out.store.read_bytes("report.html").decode()
    assert "typed by majority" in html and "did not parse" in html


def test_second_run_checks_csv_text_against_the_reference(ray_session, tmp_path):
    """Numbers and booleans keep arriving as text: the reference's types still apply, and a new bad value is
    quarantined with its value, not a changed type."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    _frame(800, 3).to_csv(first, index=False)
    later = _frame(800, 4).astype({"x": object, "flag": object})
    later.loc[5, "x"], later.loc[6, "flag"] = "12 EUR", "perhaps"
    later.to_csv(second, index=False)
    spec = _spec(tmp_path, "t-csv-ref", {"type": "csv", "path": str(first)})
    raypipe.run(spec, until="validate", progress=quiet)
    spec["data"]["source"]["path"] = str(second)
    out = raypipe.run(spec, until="validate", progress=quiet).outputs["validate"]
    report = out.store.read_json("report.json")
    assert report["schema_source"] == "reference" and report["status"] == "passed", report["errors"]
    assert sorted(_quarantined(out)["__reason"]) == ["flag: not a boolean: 'perhaps'", "x: not a number: '12 EUR'"]


# --- json: missing means missing, mixed types --------------------------------------------------------------
def test_json_na_tokens_are_missing_and_mixed_columns_are_typed_by_majority(ray_session, tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    rows = _frame(300, 5).to_dict("records")
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:200]) + "\n")  # typed: x is a number
    later = rows[200:]
    later[0]["x"], later[1]["x"], later[2]["x"] = "NA", "oops", None  # numbers and text in one file
    later[3]["y"], later[4]["y"], later[5]["flag"] = "", "null", "N/A"
    (folder / "b.json").write_text(json.dumps(later))
    out = raypipe.run(_spec(tmp_path, "t-json", {"type": "json", "path": str(folder)}), until="validate",
                      progress=quiet).outputs["validate"]
    schema = out.store.read_json("schema.json")
    assert schema["columns"]["x"]["type"] == "number" and schema["target"]["classes"] == ["a", "b"]
    assert schema["columns"]["flag"]["type"] == "boolean"
    reasons = dict(zip(_quarantined(out)["id"].astype(int), _quarantined(out)["__reason"]))
    assert reasons == {201: "x: not a number: 'oops'", 203: "y: target is missing", 204: "y: target is missing"}
    valid = pd.concat(read_parquet(out.store, f"valid/{s}").to_pandas() for s in out.outputs.splits)
    assert valid.set_index("id").loc[[200, 202], "x"].isna().all() and pd.isna(valid.set_index("id").loc[205, "flag"])


# --- the quarantine ceiling -----------------------------------------------------------------------------
def test_too_many_quarantined_rows_fail_with_the_reasons_counts_exit_3(ray_session, tmp_path):
    from raypipe.cli import main

    df = _frame(1000, 6).astype({"y": object})
    df.loc[df.index[:150], "y"] = ""  # 15 % of the rows have no label
    df.to_csv(tmp_path / "d.csv", index=False)
    spec = _spec(tmp_path, "t-ceiling", {"type": "csv", "path": str(tmp_path / "d.csv")})
    with pytest.raises(DataValidationError) as info:
        raypipe.run(spec, until="validate", progress=quiet)
    problem = "\n".join(info.value.problems)
    assert "15.0% of the rows (150 of 1,000) were quarantined > validate.max_quarantine_fraction=0.1" in problem
    assert "y: target is missing: 150" in problem
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as cli:
        main(["run", str(path), "--until", "validate"])
    assert cli.value.code == 3
    spec["validate"] = {"max_quarantine_fraction": 0.2}
    out = raypipe.run(spec, until="validate", progress=quiet).outputs["validate"]
    assert out.outputs.quarantined == 150


# --- task sanity --------------------------------------------------------------------------------------
def test_a_regression_target_under_classification_fails_fast_exit_2(ray_session, tmp_path, capsys):
    from raypipe.cli import main

    df = _frame(600, 7)
    df["y"] = (df["x"] * 1000 + 17.5).round(2)  # a price
    df.to_csv(tmp_path / "d.csv", index=False)
    spec = _spec(tmp_path, "t-task", {"type": "csv", "path": str(tmp_path / "d.csv")})
    with pytest.raises(SpecError, match=r"looks like regression: \d+ distinct values.*set data.task: regression"):
        raypipe.run(spec, progress=quiet)
    manifest = max((tmp_path / "store" / "runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    stages = {s["name"]: s["status"] for s in json.loads(manifest.read_text())["stages"]}
    assert stages == {"ingest": "ran", "validate": "failed"}  # before features, before any training
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as cli:
        main(["run", str(path)])
    assert cli.value.code == 2 and "looks like regression" in capsys.readouterr().err
    spec["data"]["task"] = "regression"
    spec["model"] = {"kind": "sklearn:sklearn.linear_model:Ridge"}
    spec["evaluate"] = {"gate": {"min": {}}}
    assert raypipe.run(spec, until="validate", progress=quiet).outputs["validate"].outputs.quarantined == 0


# --- the row invariants come from the files on disk ---------------------------------------------------------
def test_row_counts_are_read_from_the_parquet_footers(ray_session, tmp_path):
    from raypipe.validate.stage import SplitCheck, _check_rows_on_disk

    df = _frame(500, 8).astype({"x": object})
    df.loc[3, "x"] = "bad"
    df.to_csv(tmp_path / "d.csv", index=False)
    result = raypipe.run(_spec(tmp_path, "t-footers", {"type": "csv", "path": str(tmp_path / "d.csv")}),
                         until="validate", progress=quiet)
    ingest, val = result.outputs["ingest"], result.outputs["validate"]
    counts = val.outputs.counts
    checks = {s: SplitCheck({"rows": c["input"], "invalid": c["quarantined"]}, {}) for s, c in counts.items()}
    ctx = SimpleNamespace(artifact=val.store)
    _check_rows_on_disk(ctx, ingest, checks)  # what the tasks reported is what the files hold
    train = sorted(Path(val.store.path("valid", "train")).glob("*.parquet"))
    shutil.copy(train[0], train[0].with_name("copy-" + train[0].name))  # a file written twice
    with pytest.raises(ArtifactError, match=r"\(parquet footers\): split 'train': on disk ingest's files hold \d+ rows "
                                            r"and validate's \d+ valid"):
        _check_rows_on_disk(ctx, ingest, checks)
