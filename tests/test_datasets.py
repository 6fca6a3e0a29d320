"""raypipe.datasets: the parts that run without Ray."""
from __future__ import annotations

import pyarrow as pa
import pytest

from raypipe.datasets import with_hive_columns

PATHS = [
    "/store/ingest/splits/__split=train/part-0.parquet",  # ingest's own split folders
    "/data/date=2024-01%2F02/country=Bo%C3%A9/f.parquet",  # URL-encoded values, as pyarrow writes them
    "relative/k=v/a=b=c/f.csv",  # a folder with two '=' is not a key
    "s3://bucket/k=1/f.parquet",
    "/data/k=/f.parquet",  # an empty value
    "/data/f.parquet",  # no folder column
]


@pytest.mark.parametrize("path", PATHS)
def test_hive_columns_are_the_ones_ray_data_adds(path: str) -> None:
    """Ray Data's readers add a path's ``key=value`` folders as text columns; the driver and task reads must
    give the same table without importing Ray Data."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource.partitioning import Partitioning, PathPartitionParser

    table = pa.table({"x": [1.5, None, 3.0], "k": ["kept", "as", "read"]})
    expected = table
    for name, value in PathPartitionParser(Partitioning("hive"))(path).items():
        if name not in expected.column_names:
            expected = BlockAccessor.for_block(expected).fill_column(name, value)
    got = with_hive_columns(table, path)
    assert got.equals(expected), (got.schema, expected.schema)


def test_hive_columns_can_be_limited_and_fill_an_empty_table() -> None:
    empty = pa.table({"x": pa.array([], pa.float64())})
    got = with_hive_columns(empty, "/d/__split=test/day=mon/f.parquet", columns=["__split"])
    assert got.schema.names == ["x", "__split"] and got.num_rows == 0
    assert got.schema.field("__split").type == pa.string()


MESSY = pa.table({"amount": [1.5, None, 3.0], "country": ["DE", None, "Boé"], "n": [1, 2, 3],
                  "ok": [True, None, False]})


def _ray_pandas(table: pa.Table):
    """Ray Data's own conversion of a block to a pandas batch under raypipe's settings (numpy dtypes)."""
    from ray.data import DataContext
    from ray.data.block import BlockAccessor

    ctx = DataContext.get_current()
    before, ctx.enable_arrow_backed_pandas_conversion = ctx.enable_arrow_backed_pandas_conversion, False
    try:
        return BlockAccessor.for_block(table).to_batch_format("pandas")
    finally:
        ctx.enable_arrow_backed_pandas_conversion = before


def test_a_pandas_batch_has_ray_datas_numpy_dtypes_even_in_a_driver_that_never_connected(monkeypatch) -> None:
    """A stage's small-data work in the driver hands its batch functions (and a user's feature operators)
    what they get in Ray Data's tasks, even before `runtime.configure_data` ran (Ray's default: Arrow-backed)."""
    import pandas as pd
    from ray.data import DataContext

    from raypipe.datasets import as_batch

    monkeypatch.setattr(DataContext.get_current(), "enable_arrow_backed_pandas_conversion", True)
    got = as_batch(MESSY, "pandas")
    pd.testing.assert_frame_equal(got, _ray_pandas(MESSY))
    assert not any(isinstance(t, pd.ArrowDtype) for t in got.dtypes), got.dtypes


def test_a_tensor_column_becomes_a_column_of_arrays_as_in_ray_data(monkeypatch) -> None:
    import numpy as np
    import pandas as pd
    from ray.data import DataContext
    from ray.data.extensions import ArrowTensorArray

    from raypipe.datasets import as_batch

    monkeypatch.setattr(DataContext.get_current(), "enable_arrow_backed_pandas_conversion", True)
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    table = MESSY.append_column("image", ArrowTensorArray.from_numpy(images))
    got = as_batch(table, "pandas")
    expected = _ray_pandas(table)
    assert list(got.columns) == list(expected.columns) and list(got.dtypes) == list(expected.dtypes)
    assert all(np.array_equal(a, b) for a, b in zip(got["image"], images))
    pd.testing.assert_frame_equal(got.drop(columns="image"), expected.drop(columns="image"))
