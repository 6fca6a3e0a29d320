"""A small built-in set is generated, split and written in the driver (``ray.small_data``), with the
same rows in the same split files as through Ray Data (``from_pandas``, then Ray tasks per block)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import raypipe
from raypipe.progress import Progress
from tests.conftest import small_spec

SETS = [
    ({"name": "transactions", "rows": 3000, "seed": 4, "drift": 0.3}, "is_fraud", ["transaction_id"]),
    ({"name": "sensors", "rows": 2000, "seed": 2}, "failure_soon", ["machine_id"]),
    ({"name": "iris"}, "target", []),  # a scikit-learn set: four blocks
]


def _splits(tmp_path, source, target, ids, small_data):
    spec = small_spec(tmp_path / small_data, name=f"t-sb-{small_data}", ray={"small_data": small_data},
                      data={"source": {"type": "builtin", **source}, "target": target, "id_columns": ids})
    out = raypipe.run(spec, until="ingest", progress=Progress(quiet=True)).outputs["ingest"]
    files = sorted(out.store.walk_files("splits"))
    # file names: a digest of the block's rows, then the writer (a Ray task's id, or "driver")
    return ({f.split("-")[0] for f in files},  # (with its split folder)
            {f.split("-")[0]: pq.read_table(out.store.path(f"splits/{f}")) for f in files},
            {"driver" if "-driver-" in f else "task" for f in files}, out.outputs.rows)


@pytest.mark.parametrize(("source", "target", "ids"), SETS, ids=[s[0]["name"] for s in SETS])
def test_a_small_builtin_set_splits_the_same_in_the_driver_and_in_ray(ray_session, tmp_path, source, target, ids):
    names_d, tables_d, writers_d, rows_d = _splits(tmp_path, source, target, ids, "auto")
    names_t, tables_t, writers_t, rows_t = _splits(tmp_path, source, target, ids, "tasks")
    assert writers_d == {"driver"} and writers_t == {"task"}
    assert names_d == names_t and rows_d == rows_t and sum(rows_d.values()) > 0
    for key, table in tables_d.items():
        assert table.equals(tables_t[key], check_metadata=True), key
