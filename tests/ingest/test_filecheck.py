"""``raypipe.ingest.filecheck`` without Ray: each bad file named, with what is wrong and the key to change."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raypipe.errors import SpecError
from raypipe.ingest.filecheck import HEAD_BYTES, check_file
from raypipe.spec import CsvSource, ParquetSource, load_spec

LOCAL = pafs.LocalFileSystem()
HEADER = "order_id,customer,city,amount,label\n"


def export_rows(n: int, start: int = 0) -> str:
    """Rows as a CRM export writes them: quoted names with commas, a note spanning two lines."""
    out = []
    for i in range(start, start + n):
        name = f'"Doe, J{i}"' if i % 3 == 0 else f"Customer {i}"
        city = '"Main St 1\nSpringfield"' if i % 7 == 0 else "Springfield"
        out.append(f"{i},{name},{city},{i * 1.5:.2f},{i % 2}\n")
    return "".join(out)


def csv(path: Path, text: str | bytes, **opts) -> tuple[str, CsvSource]:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path), CsvSource(type="csv", path=str(path), **opts)


def test_a_clean_messy_export_has_no_problem(tmp_path: Path) -> None:
    f, src = csv(tmp_path / "ok.csv", "\ufeff" + HEADER + export_rows(40))  # BOM, quoted commas and newlines
    assert check_file(LOCAL, f, src) is None
    assert check_file(LOCAL, f, src, full=True) is None


def test_latin1_names_the_file_the_byte_offset_and_the_key(tmp_path: Path) -> None:
    text = HEADER + "1,José Müller,Köln,3.50,1\n"
    f, src = csv(tmp_path / "crm.csv", text.encode("latin-1"))
    problem = check_file(LOCAL, f, src)
    at = text.encode("latin-1").index("é".encode("latin-1"))
    assert problem and not problem.empty
    assert "crm.csv" in problem.message and f"byte {at}" in problem.message and "0xe9" in problem.message
    assert "data.source.encoding" in problem.message and "on_bad_files: skip" in problem.message
    _, told = csv(tmp_path / "crm.csv", text.encode("latin-1"), encoding="latin-1")
    assert check_file(LOCAL, f, told) is None


def test_invalid_byte_past_the_first_block_is_found_by_the_full_check(tmp_path: Path) -> None:
    rows = export_rows(40_000)
    assert len(rows) > HEAD_BYTES
    text = (HEADER + rows).encode() + "99,Zoë,Genève,1.00,0\n".encode("cp1252")
    f, src = csv(tmp_path / "big.csv", text)
    assert check_file(LOCAL, f, src) is None  # the quick check reads the first block only
    problem = check_file(LOCAL, f, src, full=True)
    assert problem and f"byte {text.index(b'Zo') + 2:,}" in problem.message


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_other_delimiter_is_named_with_the_key(tmp_path: Path, sep: str, name: str) -> None:
    f, src = csv(tmp_path / "eu.csv", (HEADER + "1,2,3,4,5\n").replace(",", sep))
    problem = check_file(LOCAL, f, src)
    assert problem and f"{name}-separated" in problem.message
    assert f"data.source.delimiter: {sep!r}" in problem.message and "eu.csv" in problem.message


def test_a_row_with_too_many_fields_is_named_by_number(tmp_path: Path) -> None:
    f, src = csv(tmp_path / "orders.csv", HEADER + export_rows(4) + "4,Ann,Springfield,1.5,0,EXTRA\n")
    problem = check_file(LOCAL, f, src)
    assert problem and "orders.csv" in problem.message
    assert "has 6 fields where the header has 5" in problem.message and "EXTRA" in problem.message
    assert "row 6" in problem.message  # header, 4 rows (one spans two lines: still one row), then this one


def test_utf8_bom_with_a_single_byte_encoding_says_the_file_is_utf8(tmp_path: Path) -> None:
    f, src = csv(tmp_path / "excel.csv", "\ufeff" + HEADER + "1,a,b,2,0\n", encoding="cp1252")
    problem = check_file(LOCAL, f, src)
    assert problem and "byte-order mark" in problem.message and "data.source.encoding: utf-8" in problem.message


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_csv_is_empty_not_bad(tmp_path: Path, content: bytes) -> None:
    f, src = csv(tmp_path / "part-7.csv", content)
    problem = check_file(LOCAL, f, src)
    assert problem and problem.empty and "part-7.csv" in problem.message


def test_truncated_parquet_is_bad_and_an_empty_one_is_fine(tmp_path: Path) -> None:
    t = pa.table({"id": list(range(500)), "x": [i / 3 for i in range(500)]})
    pq.write_table(t, tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    src = ParquetSource(type="parquet", path=str(tmp_path))
    problem = check_file(LOCAL, str(tmp_path / "cut.parquet"), src)
    assert problem and "cut.parquet" in problem.message and "truncated" in problem.message
    assert "on_bad_files: skip" in problem.message
    assert check_file(LOCAL, str(tmp_path / "empty.parquet"), src, full=True) is None


def test_spec_keys_delimiter_encoding_on_bad_files(tmp_path: Path) -> None:
    base = {"name": "t", "data": {"target": "label"}}
    ok = load_spec({**base, "data": {**base["data"], "source": {
        "type": "csv", "path": "x.csv", "delimiter": "\\t", "encoding": "latin-1", "on_bad_files": "skip"}}},
        base_dir=tmp_path)
    assert (ok.data.source.delimiter, ok.data.source.encoding, ok.data.source.on_bad_files) == ("\t", "latin-1", "skip")
    assert load_spec({**base, "data": {**base["data"], "source": {"type": "parquet", "path": "x"}}},
                     base_dir=tmp_path).data.source.on_bad_files == "fail"
    for bad, key in (({"encoding": "latin-9x"}, "encoding"), ({"delimiter": ";;"}, "delimiter"),
                     ({"on_bad_files": "ignore"}, "on_bad_files")):
        with pytest.raises(SpecError, match=f"data.source.*{key}"):
            load_spec({**base, "data": {**base["data"], "source": {"type": "csv", "path": "x.csv", **bad}}},
                      base_dir=tmp_path)
