"""Messy and broken input files through ``raypipe.run(until="ingest")``: a clear error or a listed skip.

Never a traceback, never silence: each bad input ends in a ``SpecError`` or
``DataValidationError`` naming the file and the spec key to change, or (with
``data.source.on_bad_files: skip``) in a run that leaves the file out and lists it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raypipe
import raypipe.datasets
from raypipe.datasets import read_parquet
from raypipe.errors import DataValidationError, SpecError
from raypipe.ingest.filecheck import HEAD_BYTES
from raypipe.progress import Progress
from tests.ingest.test_filecheck import HEADER, export_rows

quiet = Progress(quiet=True)
NOT_SHOWN = ("Traceback", "RayTaskError", "KeyError", "ArrowInvalid", "pyarrow.lib", 'File "')


def spec(tmp_path: Path, source: dict) -> dict:
    return {"name": "t-bad-files", "storage": str(tmp_path / "store"),
            "data": {"source": {"path": str(tmp_path / "in"), **source}, "target": "label"}}


def parquet_part(folder: Path, name: str, start: int, n: int) -> None:
    ids = list(range(start, start + n))
    pq.write_table(pa.table({"order_id": ids, "amount": [i * 1.5 for i in ids], "label": [i % 2 for i in ids]}),
                   folder / name)


# Each case: write the input folder; the source keys; the file and spec key the error must name; the rows a
# skip run reads (None: no skip run, nothing good is left beside the bad input).
def empty_parquet(d: Path) -> None:
    pq.write_table(pa.table({"order_id": pa.array([], pa.int64()), "label": pa.array([], pa.int64())}),
                   d / "part-0.parquet")


def zero_byte_csv(d: Path) -> None:
    (d / "export.csv").write_bytes(b"")


def truncated_parquet(d: Path) -> None:
    parquet_part(d, "part-0.parquet", 0, 40)
    parquet_part(d, "part-1.parquet", 40, 30)
    data = (d / "part-1.parquet").read_bytes()
    (d / "part-1.parquet").write_bytes(data[: len(data) * 2 // 3])  # an interrupted copy
    parquet_part(d, "part-2.parquet", 70, 30)


def malformed_line(d: Path) -> None:
    (d / "jan.csv").write_text(HEADER + export_rows(40))
    (d / "feb.csv").write_text(HEADER + export_rows(10, 40) + "50,Ann,Springfield,3.0,1,oops\n" + export_rows(5, 51))


def latin1_csv(d: Path) -> None:
    (d / "jan.csv").write_text(HEADER + export_rows(40))
    (d / "feb.csv").write_bytes((HEADER + "40,José Müller,Köln,3.50,1\n" + export_rows(9, 41)).encode("latin-1"))


def semicolon_csv(d: Path) -> None:
    (d / "jan.csv").write_text(HEADER + export_rows(40))
    (d / "feb.csv").write_text((HEADER + "40,a,b,3.5,1\n41,c,d,1.0,0\n").replace(",", ";"))


def malformed_past_first_block(d: Path) -> None:
    (d / "jan.csv").write_text(HEADER + export_rows(40))
    rows = export_rows(30_000, 100)
    assert len(rows) > HEAD_BYTES  # the quick check does not see it: the read fails, then every file is checked
    (d / "big.csv").write_text(HEADER + rows + "99999,Ann,Springfield,3.0,1,oops\n")


CASES: dict[str, tuple[Callable[[Path], None], dict, str, str, int | None]] = {
    "empty parquet (schema, 0 rows)": (empty_parquet, {"type": "parquet"}, "in", "data.source.path", None),
    "0-byte csv": (zero_byte_csv, {"type": "csv"}, "export.csv", "data.source.path", None),
    "truncated parquet among good": (truncated_parquet, {"type": "parquet"}, "part-1.parquet", "on_bad_files", 70),
    "malformed csv line": (malformed_line, {"type": "csv"}, "feb.csv", "data.source.delimiter", 40),
    "latin-1 read as utf-8": (latin1_csv, {"type": "csv"}, "feb.csv", "data.source.encoding", 40),
    "; read with ,": (semicolon_csv, {"type": "csv"}, "feb.csv", "data.source.delimiter: ';'", 40),
    "malformed past the first block": (malformed_past_first_block, {"type": "csv"}, "big.csv", "on_bad_files", 40),
}


@pytest.mark.parametrize("read", ["driver", "a task per file"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error_or_a_listed_skip(tmp_path: Path, ray_session, case: str, read: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if read != "driver":  # as a large input: each file read in a Ray task of its own (ingest.split.PerFile)
        monkeypatch.setattr(raypipe.datasets, "SMALL_DATA_BYTES", 0)
    write, source, file, key, skip_rows = CASES[case]
    (tmp_path / "in").mkdir()
    write(tmp_path / "in")
    with pytest.raises((SpecError, DataValidationError)) as info:
        raypipe.run(spec(tmp_path, source), until="ingest", progress=quiet)
    msg = str(info.value)
    assert file in msg and key in msg, msg
    assert not any(s in msg for s in NOT_SHOWN), msg
    if skip_rows is None:
        return
    result = raypipe.run(spec(tmp_path, {**source, "on_bad_files": "skip"}), until="ingest", progress=quiet)
    out = result.outputs["ingest"].outputs
    assert out.input_rows == skip_rows
    assert out.files["read"] == len(list((tmp_path / "in").iterdir())) - 1 and out.files["skipped_bad"] == 1
    [bad] = [s for s in out.skipped_files if s["kind"] == "bad"]
    assert bad["file"].endswith(file) and key.split(":")[0] in bad["reason"]


def test_latin1_file_reads_when_the_encoding_is_told(tmp_path: Path, ray_session) -> None:
    (tmp_path / "in").mkdir()
    latin1_csv(tmp_path / "in")
    (tmp_path / "in" / "jan.csv").write_bytes((HEADER + export_rows(40)).encode("latin-1"))
    result = raypipe.run(spec(tmp_path, {"type": "csv", "encoding": "latin-1"}), until="ingest", progress=quiet)
    ingest = result.outputs["ingest"]
    rows = {s: read_parquet(ingest.store, p).to_pandas() for s, p in ingest.outputs.splits.items()}
    names = {n for df in rows.values() for n in df["customer"]}
    assert "José Müller" in names and ingest.outputs.input_rows == 50


def test_bom_quoted_newlines_and_files_skipped_by_name(tmp_path: Path, ray_session) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "jan.csv").write_text("\ufeff" + HEADER + export_rows(40))  # Excel's "CSV UTF-8": a BOM
    (d / "feb.csv").write_text("\ufeff" + HEADER + export_rows(20, 40))
    (d / "README.txt").write_text("exported from the CRM on 2024-03-01\n")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
    (d / "_SUCCESS").write_bytes(b"")
    result = raypipe.run(spec(tmp_path, {"type": "csv"}), until="ingest", progress=quiet)
    ingest = result.outputs["ingest"]
    df = read_parquet(ingest.store, ingest.outputs.splits["train"]).to_pandas()
    assert df.columns[0] == "order_id"  # not '\ufefforder_id'
    assert ingest.outputs.input_rows == 60  # a quoted newline does not split a row
    assert any("\n" in c for c in df["city"]) and set(df["label"]) == {"0", "1"}  # csv text: validate types it
    assert ingest.outputs.files == {"read": 2, "skipped_name": 3, "skipped_empty": 0, "skipped_bad": 0}
    skipped = {Path(s["file"]).name: s["reason"] for s in ingest.outputs.skipped_files}
    assert set(skipped) == {"README.txt", ".DS_Store", "_SUCCESS"}
    assert "not a csv file name" in skipped["README.txt"] and "starts with '.' or '_'" in skipped[".DS_Store"]
    saved = json.loads((Path(ingest.store.path("outputs.json"))).read_text())
    assert saved["files"]["skipped_name"] == 3


def test_zero_byte_csv_beside_data_is_skipped_and_counted(tmp_path: Path, ray_session) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "jan.csv").write_text(HEADER + export_rows(40))
    (d / "feb.csv").write_bytes(b"")  # an export of an empty month
    result = raypipe.run(spec(tmp_path, {"type": "csv"}), until="ingest", progress=quiet)
    out = result.outputs["ingest"].outputs
    assert out.input_rows == 40 and out.files["skipped_empty"] == 1
    assert [Path(s["file"]).name for s in out.skipped_files] == ["feb.csv"]


def test_cli_exit_code_and_message_on_a_bad_file(tmp_path: Path) -> None:
    """The user's view, ``raypipe run`` in a fresh process: exit 3, the file and the key, no traceback.

    The files are checked before Ray starts, so this fails in seconds without starting one.
    """
    import subprocess
    import sys

    import yaml

    (tmp_path / "in").mkdir()
    semicolon_csv(tmp_path / "in")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**spec(tmp_path, {"type": "csv"}), "ray": {"temp_dir": str(tmp_path / "ray")}}))
    proc = subprocess.run([sys.executable, "-m", "raypipe", "run", str(path), "--until", "ingest"],
                          check=False, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == DataValidationError.exit_code == 3, out
    assert "feb.csv" in out and "data.source.delimiter: ';'" in out
    assert not any(s in out for s in NOT_SHOWN), out
    assert not (tmp_path / "ray").exists()  # no Ray was started for a run that could not read its input


def test_data_report_lists_the_skipped_files(tmp_path: Path, ray_session) -> None:
    d = tmp_path / "in"
    d.mkdir()
    truncated_parquet(d)
    (d / "README.txt").write_text("orders, one file a day\n")
    result = raypipe.run(spec(tmp_path, {"type": "parquet", "on_bad_files": "skip"}), until="validate",
                         progress=quiet)
    validate = result.outputs["validate"]
    report = validate.store.read_json("report.json")
    assert report["input_files"]["counts"] == {"read": 2, "skipped_name": 1, "skipped_empty": 0, "skipped_bad": 1}
    kinds = {Path(s["file"]).name: s["kind"] for s in report["input_files"]["skipped"]}
    assert kinds == {"README.txt": "name", "part-1.parquet": "bad"}
    html = (Path(validate.store.path("report.html"))).read_text()
    assert "Input files" in html and "part-1.parquet" in html and "truncated" in html


# --- bad columns: found by validate, before any training ------------------------------------------------
def float_target(d: Path) -> None:
    ids = list(range(600))
    pq.write_table(pa.table({"order_id": ids, "amount": [i % 37 * 1.5 for i in ids],
                             "label": [round(17.5 + i * 0.731 % 90, 2) for i in ids]}), d / "part-0.parquet")


def million_distinct_strings(d: Path) -> None:
    n = 1_000_000
    ids = pa.array(range(n))
    pq.write_table(pa.table({"session": pa.compute.binary_join_element_wise("s-", pa.compute.cast(ids, pa.string()), ""),
                             "amount": pa.compute.multiply(pa.compute.bit_wise_and(ids, 63), 1.5),
                             "label": pa.compute.bit_wise_and(ids, 1)}), d / "part-0.parquet")


COLUMN_CASES: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    # error: the exception's text holds these; warning (the run goes on): a warning holds them
    "a float target with the default task": (float_target, "error", ("'label'", "set data.task: regression")),
    "a column of 1M distinct strings": (million_distinct_strings, "warning", ("'session'", "data.id_columns")),
}


@pytest.mark.parametrize("case", list(COLUMN_CASES))
def test_bad_columns_are_named_with_the_key_to_change(tmp_path: Path, ray_session, case: str) -> None:
    write, outcome, named = COLUMN_CASES[case]
    (tmp_path / "in").mkdir()
    write(tmp_path / "in")
    run = spec(tmp_path, {"type": "parquet"})
    if outcome == "error":
        with pytest.raises((SpecError, DataValidationError)) as info:
            raypipe.run(run, until="validate", progress=quiet)
        msg = str(info.value)
        assert all(s in msg for s in named) and not any(s in msg for s in NOT_SHOWN), msg
        return
    val = raypipe.run(run, until="validate", progress=quiet).outputs["validate"]
    assert any(all(s in w for s in named) for w in val.outputs.warnings), val.outputs.warnings
    schema = val.read_json(val.outputs.schema)
    assert "session" not in schema["features"]["categorical"]  # never one-hot encoded
    assert val.outputs.quarantined == 0
