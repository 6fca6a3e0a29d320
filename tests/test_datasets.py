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
