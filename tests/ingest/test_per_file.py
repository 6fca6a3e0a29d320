"""Large parquet and csv inputs are read one plain Ray task per file (``split.PerFile``), with no Ray Data
execution; many files or big ones still go through Ray Data. Both reads give the same split files' rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raypipe
import raypipe.datasets
import raypipe.ingest.files as files
from raypipe import executions
from raypipe.ingest.files import plan_read, reads_per_file
from raypipe.progress import Progress
from raypipe.spec import CsvSource, ParquetSource
from tests.conftest import small_spec


def _messy(n: int, seed: int) -> pd.DataFrame:
    """Ids, a number column with stray text and empty cells, a category, dates, a label with a missing value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n).round(4).astype(object)
    if n > 20:
        x[rng.choice(n, 5, replace=False)] = "n/a?"
        x[rng.choice(n, 5, replace=False)] = None
    return pd.DataFrame({"id": np.arange(n) + seed * 10_000, "x": x,
                         "c": rng.choice(["ü-nord", "süd", None], n),
                         "day": pd.date_range("2026-01-01", periods=n, freq="h").strftime("%d/%m/%Y %H:%M"),
                         "y": np.where(rng.random(n) < 0.3, "yes", "no")})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("perfile")
    (root / "csv").mkdir()
    (root / "pq").mkdir()
    for i, n in enumerate((1500, 700, 1)):  # a one-row file too
        df = _messy(n, i)
        df.to_csv(root / "csv" / f"part-{i}.csv", index=False, encoding="utf-8")
        pq.write_table(pa.Table.from_pandas(df.astype({"x": str}), preserve_index=False),
                       root / "pq" / f"part-{i}.parquet")
    return root


def _ingest(tmp_path, source: dict, name: str):
    spec = small_spec(tmp_path / name, name=f"t-pf-{name}", ray={"small_data": "tasks"},
                      data={"source": source, "target": "y", "id_columns": ["id"]})
    with executions.recording() as seen:
        out = raypipe.run(spec, until="ingest", progress=Progress(quiet=True)).outputs["ingest"]
    splits = {s: pq.read_table(out.store.path(rel)).to_pandas().sort_values("id").reset_index(drop=True)
              for s, rel in out.outputs.splits.items()}
    return splits, out.outputs.rows, executions.per_stage(seen).get("ingest", 0), out.store.walk_files("splits")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_task_per_file_and_ray_data_split_alike(ray_session, tmp_path, inputs, monkeypatch, kind):
    monkeypatch.setattr(raypipe.datasets, "SMALL_DATA_BYTES", 0)  # the large path
    source = {"type": kind, "path": str(inputs / ("csv" if kind == "csv" else "pq"))}
    per_file, rows, runs, written = _ingest(tmp_path, source, f"{kind}-tasks")
    assert runs == 0  # no Ray Data execution
    assert len({f.split("-")[0] for f in written}) == 7  # a file per input file and split (the one-row file: one)
    monkeypatch.setattr(files, "TASK_FILE_BYTES", 0)  # every file "too big": Ray Data reads them
    by_ray_data, rows_rd, runs_rd, _ = _ingest(tmp_path, source, f"{kind}-ray-data")
    assert runs_rd == 1
    assert rows == rows_rd and sum(rows.values()) == 2201
    for name, df in per_file.items():
        pd.testing.assert_frame_equal(df, by_ray_data[name])
    cells = pd.concat(per_file.values())
    assert (cells["x"] == "n/a?").sum() <= 10 and cells["x"].isna().sum() >= 1 and cells["c"].isna().sum() > 0  # text kept, empty cells missing
    assert set(cells["c"].dropna()) == {"ü-nord", "süd"}


def test_which_reads_go_per_file(tmp_path, monkeypatch):
    folder = tmp_path / "csv"
    folder.mkdir()
    for i in range(3):
        _messy(50, i).to_csv(folder / f"p{i}.csv", index=False)
    read = plan_read(CsvSource(type="csv", path=str(folder)))
    assert reads_per_file(read)
    monkeypatch.setattr(files, "TASK_MAX_FILES", 2)
    assert not reads_per_file(read)  # many files: Ray Data groups them into fewer blocks
    monkeypatch.setattr(files, "TASK_MAX_FILES", 256)
    _messy(50, 9).to_csv(folder / "p9.csv.gz", index=False)
    assert not reads_per_file(plan_read(CsvSource(type="csv", path=str(folder))))  # compressed: size unknown
    pq_folder = tmp_path / "pq"
    pq_folder.mkdir()
    pq.write_table(pa.table({"a": np.arange(10_000)}), pq_folder / "a.parquet")
    read = plan_read(ParquetSource(type="parquet", path=str(pq_folder)))
    assert reads_per_file(read)
    monkeypatch.setattr(files, "TASK_FILE_BYTES", 70_000)  # 80,000 bytes uncompressed, whatever the codec
    assert not reads_per_file(read)


def test_a_bad_file_read_in_a_task_is_reported_once(ray_session, tmp_path, monkeypatch, caplog):
    """The run's error names the file and the fix; Ray does not also log the failed task's traceback as an
    unhandled error when its block's ref is dropped (``datasets.run_tasks_keeping``)."""
    import gc
    import time

    from raypipe.errors import DataValidationError
    from tests.ingest.test_filecheck import HEADER, export_rows

    monkeypatch.setattr(raypipe.datasets, "SMALL_DATA_BYTES", 0)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "jan.csv").write_text(HEADER + export_rows(40))
    (folder / "big.csv").write_text(HEADER + export_rows(30_000, 100) + "99999,Ann,Springfield,3.0,1,oops\n")
    spec = {"name": "t-pf-bad", "storage": str(tmp_path / "store"),
            "data": {"source": {"type": "csv", "path": str(folder)}, "target": "label"}}
    with caplog.at_level("ERROR"), pytest.raises(DataValidationError) as info:
        raypipe.run(spec, until="ingest", progress=Progress(quiet=True))
    assert "big.csv" in str(info.value) and "row 30,002" in str(info.value)
    del info
    with caplog.at_level("ERROR"):
        gc.collect()
        time.sleep(2)  # Ray logs an error never got from a background thread once the ref is freed
    assert not [r for r in caplog.records if "Unhandled error" in r.getMessage()]
