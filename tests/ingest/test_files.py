"""``raypipe.ingest.files`` on local files and on a real S3-compatible server (moto) on loopback."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raypipe.errors import SpecError
from raypipe.ingest.files import filesystem_and_path, read_files
from raypipe.spec import CsvSource, JsonSource, ParquetSource
from raypipe.store import iter_file_digests
from tests.conftest import free_port


def table(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"id": ids, "x": [i / 4 for i in ids], "cat": [f"c{i % 3}" for i in ids]})


def rows(ds) -> pd.DataFrame:
    return ds.to_pandas().sort_values("id").reset_index(drop=True)


def csv_rows(ds) -> pd.DataFrame:
    """A csv source's rows: every column arrives as text (validate types them), here made numbers again."""
    df = ds.to_pandas()
    assert all(isinstance(v, str) for c in df.columns for v in df[c].dropna()), df.dtypes
    return rows(ds.map_batches(lambda b: b.astype({"id": "int64", "x": "float64"}), batch_format="pandas"))


def assert_ids_and_values(df: pd.DataFrame, n: int) -> None:
    assert df["id"].tolist() == list(range(n))
    assert df["x"].tolist() == [i / 4 for i in range(n)]
    assert df["cat"].tolist() == [f"c{i % 3}" for i in range(n)]


def junk(folder: Path) -> None:
    """What Spark/Hadoop leave beside data files: read_files must skip them."""
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0.crc").write_bytes(b"\x00\x01crc")


# --- local files ---------------------------------------------------------------------
def test_local_parquet_folder_and_file(tmp_path: Path, ray_session) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(table(0, 60), folder / "part-0.parquet")
    pq.write_table(table(60, 40), folder / "part-1.parquet")
    junk(folder)
    assert_ids_and_values(rows(read_files(ParquetSource(type="parquet", path=str(folder)))), 100)
    one = read_files(ParquetSource(type="parquet", path=str(folder / "part-0.parquet")))
    assert one.count() == 60


def test_local_csv_with_delimiter(tmp_path: Path, ray_session) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    opts = pacsv.WriteOptions(delimiter=";")
    pacsv.write_csv(table(0, 30), folder / "a.csv", write_options=opts)
    pacsv.write_csv(table(30, 20), folder / "b.csv", write_options=opts)
    junk(folder)
    (folder / "README.md").write_text("not data")
    df = csv_rows(read_files(CsvSource(type="csv", path=str(folder), delimiter=";")))
    assert_ids_and_values(df, 50)


def test_local_json_lines_and_arrays(tmp_path: Path, ray_session) -> None:
    folder = tmp_path / "json"
    folder.mkdir()
    recs = table(0, 40).to_pylist()
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs[:15]) + "\n")
    (folder / "b.json").write_text(json.dumps(recs[15:30], indent=2))  # a pretty-printed array
    late = [dict(r, extra="only-later") if i else r for i, r in enumerate(recs[30:])]  # key absent in the 1st
    (folder / "c.json").write_text("  \n" + json.dumps(late))
    (folder / "empty.jsonl").write_text("")
    junk(folder)
    df = rows(read_files(JsonSource(type="json", path=str(folder))))
    assert_ids_and_values(df, 40)
    assert df["extra"].notna().sum() == 9  # pa.Table.from_pylist alone would drop the column

    one = read_files(JsonSource(type="json", path=str(folder / "b.json")))
    assert one.count() == 15


def cells(s: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in s]


def test_csv_cells_stay_text_and_na_values_are_missing(tmp_path: Path, ray_session) -> None:
    """Every csv column arrives as text, so no file or block types a column on its own; the NA tokens
    (and empty cells, quoted or not) are missing in every column; a file with other columns adds them."""
    (tmp_path / "a.csv").write_text('id,x,y\n1,1.5,yes\n2,NA,""\n3,n/a?,N/A\n4,-,null\n5,?,None\n6,7,NaN\n')
    (tmp_path / "b.csv").write_text("id,x,extra\n7,,z\n")
    df = read_files(CsvSource(type="csv", path=str(tmp_path))).to_pandas().sort_values("id", key=lambda s: s.astype(int))
    assert cells(df["x"]) == ["1.5", None, "n/a?", None, None, "7", None]
    assert cells(df["y"]) == ["yes", None, None, None, None, None, None]
    assert cells(df["extra"]) == [None] * 6 + ["z"]
    own = read_files(CsvSource(type="csv", path=str(tmp_path / "a.csv")), na_values=["NA"]).to_pandas()
    assert cells(own["x"]) == ["1.5", None, "n/a?", "-", "?", "7"] and cells(own["y"])[1] == ""


def test_json_na_values_are_missing_and_mixed_columns_are_text(tmp_path: Path, ray_session) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1, "x": 1.5, "y": "NA"}\n{"id": 2, "x": "n/a?", "y": ""}\n'
                                      '{"id": 3, "x": "NA", "y": "b"}\n{"id": 4, "x": true, "y": null}\n')
    df = rows(read_files(JsonSource(type="json", path=str(tmp_path))))
    assert cells(df["x"]) == ["1.5", "n/a?", None, "true"]  # numbers and text in one column: text, typed later
    assert cells(df["y"]) == [None, None, "b", None]


def test_missing_path_is_a_spec_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    for src in (ParquetSource(type="parquet", path=missing), CsvSource(type="csv", path=missing),
                JsonSource(type="json", path=missing)):
        with pytest.raises(SpecError) as e:
            read_files(src)
        assert "data.source.path" in str(e.value) and missing in str(e.value) and "point it at" in str(e.value)


def test_folder_without_data_files_and_bad_json(tmp_path: Path) -> None:
    junk(tmp_path)
    with pytest.raises(SpecError, match="holds no parquet files"):
        read_files(ParquetSource(type="parquet", path=str(tmp_path)))
    (tmp_path / "x.json").write_text("id,x\n1,2\n")
    with pytest.raises(SpecError, match="'x.json'.*neither JSON lines.*nor a JSON array"):
        read_files(JsonSource(type="json", path=str(tmp_path)))


def test_filesystem_and_path(tmp_path: Path) -> None:
    fs, path = filesystem_and_path(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    fs, path = filesystem_and_path(f"file://{tmp_path}")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    with pytest.raises(SpecError, match="data.source.path.*\\*\\*\\*@") as e:
        filesystem_and_path("nosuchscheme://user:hunter2@host/x")
    assert "hunter2" not in str(e.value)


def test_s3_credentials_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = s3_uri(free_port(), "b/k")  # endpoint_override: from_uri makes no request
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    fs, _ = filesystem_and_path(uri)
    assert fs.__reduce__()[1][0]["access_key"] is None  # the SDK's default chain, in each process
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    opts = filesystem_and_path(uri)[0].__reduce__()[1][0]
    assert (opts["access_key"], opts["secret_key"], opts["session_token"]) == ("env-key", "env-secret", "env-token")
    with pytest.raises(SpecError, match="not a path pyarrow can open.*Unexpected query parameter"):
        filesystem_and_path(uri + "&endpoint=typo")


# --- S3 (moto server) ------------------------------------------------------------------------
def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer on 127.0.0.1:{port} within {timeout:.0f}s")


@pytest.fixture(scope="module")
def moto_port():
    import boto3  # noqa: F401  (dev extra: a missing package fails the test, it is not skipped)
    import moto.server  # noqa: F401

    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def s3(moto_port: int, monkeypatch: pytest.MonkeyPatch):
    """A boto3 client on the moto server, with dummy credentials in the environment."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance-metadata endpoint
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1")


def s3_uri(port: int, bucket_path: str) -> str:
    return f"s3://{bucket_path}?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


def put(s3, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def parquet_bytes(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def csv_bytes(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(t, buf)
    return buf.getvalue()


def test_s3_parquet_and_csv_through_read_files(s3, moto_port: int, ray_session) -> None:
    s3.create_bucket(Bucket="rp-data")
    put(s3, "rp-data", "pq/part-0.parquet", parquet_bytes(table(0, 70)))
    put(s3, "rp-data", "pq/part-1.parquet", parquet_bytes(table(70, 30)))
    put(s3, "rp-data", "pq/_SUCCESS", b"")
    put(s3, "rp-data", "csv/a.csv", csv_bytes(table(0, 25)))
    put(s3, "rp-data", "csv/_SUCCESS", b"")
    recs = table(0, 20).to_pylist()
    put(s3, "rp-data", "json/a.jsonl", "\n".join(json.dumps(r) for r in recs[:12]).encode())
    put(s3, "rp-data", "json/b.json", json.dumps(recs[12:]).encode())

    fs, path = filesystem_and_path(s3_uri(moto_port, "rp-data/pq"))
    assert isinstance(fs, pafs.S3FileSystem) and path == "rp-data/pq"
    # The driver's credentials travel with the filesystem: Ray workers started before they were set read too.
    assert fs.__reduce__()[1][0]["access_key"] == "testing-key"
    assert_ids_and_values(rows(read_files(ParquetSource(type="parquet", path=s3_uri(moto_port, "rp-data/pq")))), 100)
    assert_ids_and_values(csv_rows(read_files(CsvSource(type="csv", path=s3_uri(moto_port, "rp-data/csv")))), 25)
    assert_ids_and_values(rows(read_files(JsonSource(type="json", path=s3_uri(moto_port, "rp-data/json")))), 20)
    one = read_files(ParquetSource(type="parquet", path=s3_uri(moto_port, "rp-data/pq/part-1.parquet")))
    assert one.count() == 30

    with pytest.raises(SpecError, match="data.source.path.*rp-data/nope"):
        read_files(ParquetSource(type="parquet", path=s3_uri(moto_port, "rp-data/nope")))


def test_s3_file_digests_follow_the_bytes(s3, moto_port: int) -> None:
    s3.create_bucket(Bucket="rp-digests")
    put(s3, "rp-digests", "d/a.parquet", parquet_bytes(table(0, 10)))
    put(s3, "rp-digests", "d/b.parquet", parquet_bytes(table(10, 10)))
    fs, path = filesystem_and_path(s3_uri(moto_port, "rp-digests/d"))

    first = list(iter_file_digests(fs, path))
    assert [name for name, _ in first] == ["a.parquet", "b.parquet"]
    put(s3, "rp-digests", "d/b.parquet", parquet_bytes(table(10, 10)))  # same bytes again
    assert list(iter_file_digests(fs, path)) == first
    put(s3, "rp-digests", "d/b.parquet", parquet_bytes(table(11, 10)))  # changed object
    changed = list(iter_file_digests(fs, path))
    assert changed[0] == first[0] and changed[1] != first[1]
    assert list(iter_file_digests(fs, path + "/a.parquet")) == [first[0]]
    with pytest.raises(FileNotFoundError):
        list(iter_file_digests(fs, "rp-digests/missing"))
