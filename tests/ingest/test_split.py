"""Unit tests for ``raypipe.ingest.split``: hashing, exact stratified proportions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.columns import row_uniform
from raypipe.ingest.split import SPLIT_COL, U_COL, _bounds, plan_splits, split_names, strata_codes, write_block_splits
from raypipe.stage import SPLITS


def frame(n: int = 1000, pos: float = 0.03, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, size=int(round(n * pos)), replace=False)] = 1
    return pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "x": rng.normal(size=n),
        "cat": rng.choice(["a", "b", "c"], size=n).astype(object),
        "y": y,
    })


# --- row_uniform -------------------------------------------------------------------------------
def test_row_uniform_deterministic_and_in_range() -> None:
    df = frame(5000)
    u1, u2 = row_uniform(df, 42), row_uniform(df.copy(), 42)
    assert np.array_equal(u1, u2)
    assert u1.dtype == np.float64
    assert (u1 >= 0).all() and (u1 < 1).all()
    # roughly uniform
    assert abs(u1.mean() - 0.5) < 0.02
    hist, _ = np.histogram(u1, bins=10, range=(0, 1))
    assert hist.min() > 400 and hist.max() < 600


def test_row_uniform_seed_dependent() -> None:
    df = frame(1000)
    u1, u2 = row_uniform(df, 1), row_uniform(df, 2)
    assert not np.array_equal(u1, u2)
    assert np.mean(u1 == u2) < 0.01
    assert abs(np.corrcoef(u1, u2)[0, 1]) < 0.1
    assert np.array_equal(row_uniform(df, 2**32 + 1), u1)  # the seed is taken mod 2**32


def test_row_uniform_depends_on_content_not_position() -> None:
    df = frame(500)
    u = row_uniform(df, 7)
    perm = np.random.default_rng(0).permutation(len(df))
    shuffled = df.iloc[perm].reset_index(drop=True)
    assert np.array_equal(row_uniform(shuffled, 7), u[perm])
    # the index is not part of the hash
    reindexed = df.set_axis(np.arange(len(df)) + 1000)
    assert np.array_equal(row_uniform(reindexed, 7), u)
    # every column is part of the hash
    changed = df.copy()
    changed.loc[3, "cat"] = "zzz"
    u2 = row_uniform(changed, 7)
    assert u2[3] != u[3] and np.array_equal(np.delete(u2, 3), np.delete(u, 3))
    # chunking does not change a row's number
    parts = np.concatenate([row_uniform(df.iloc[i: i + 77], 7) for i in range(0, len(df), 77)])
    assert np.array_equal(parts, u)


# --- thresholds + assign -------------------------------------------------------------------------
# The driver's per-stratum bounds (as plan_splits computes them) and a block's split names (as
# write_block_splits assigns them), on pandas frames.
def stratum(values: pd.Series | None, n: int) -> np.ndarray:
    codes, names = strata_codes(values, n)
    return names[codes]


def thresholds(strata: np.ndarray, u: np.ndarray, test: float, validation: float) -> dict[str, tuple[float, float]]:
    return {str(s): _bounds(np.sort(u[strata == s]), test, validation) for s in np.unique(strata)}


def assign(batch: pd.DataFrame, bounds: dict[str, tuple[float, float]], target: str | None) -> pd.DataFrame:
    codes, names = strata_codes(batch[target] if target else None, len(batch))
    batch[SPLIT_COL] = split_names(codes, names, batch[U_COL].to_numpy(), bounds)
    return batch


def split_counts(out: pd.DataFrame) -> pd.DataFrame:
    return out.groupby(["y", SPLIT_COL]).size().unstack(fill_value=0)


@pytest.mark.parametrize("test, validation", [(0.15, 0.15), (0.2, 0.1), (0.1, 0.0)])
def test_exact_per_class_proportions(test: float, validation: float) -> None:
    df = frame(1000, pos=0.03)
    df[U_COL] = row_uniform(df, 42)
    bounds = thresholds(stratum(df["y"], len(df)), df[U_COL].to_numpy(), test, validation)
    assert set(bounds) == {"0", "1"}
    # assign works block by block with the global bounds
    out = pd.concat([assign(df.iloc[i: i + 128].copy(), bounds, "y") for i in range(0, len(df), 128)])
    assert len(out) == len(df)
    counts = split_counts(out)
    for cls, n in df["y"].value_counts().items():
        row = counts.loc[cls]
        assert row.get("test", 0) == round(n * test), (cls, row.to_dict())
        assert row.get("test", 0) + row.get("validation", 0) == round(n * (test + validation)), (cls, row.to_dict())
        assert abs(row.get("validation", 0) - round(n * validation)) <= 1
        assert row.sum() == n
    # the minority class is in every non-empty split
    assert counts.loc[1, "test"] > 0 and counts.loc[1, "train"] > 0


def test_unstratified_bounds() -> None:
    df = frame(1000)
    df[U_COL] = row_uniform(df, 1)
    bounds = thresholds(stratum(None, len(df)), df[U_COL].to_numpy(), 0.25, 0.25)
    out = assign(df.copy(), bounds, None)
    assert out[SPLIT_COL].value_counts().to_dict() == {"train": 500, "test": 250, "validation": 250}


def test_duplicate_rows_same_split() -> None:
    base = frame(300)
    dup = pd.concat([base, base.iloc[:100], base.iloc[:50]], ignore_index=True)
    dup[U_COL] = row_uniform(dup, 42)
    bounds = thresholds(stratum(dup["y"], len(dup)), dup[U_COL].to_numpy(), 0.2, 0.2)
    out = assign(dup.copy(), bounds, "y")
    per_id = out.groupby("id")[SPLIT_COL].nunique()
    assert (per_id == 1).all()
    assert set(out[SPLIT_COL]) == {"train", "validation", "test"}


def test_assign_empty_batch() -> None:
    df = frame(10).iloc[:0].copy()
    df[U_COL] = np.array([], dtype=np.float64)
    out = assign(df, {"0": (0.1, 0.2)}, "y")
    assert len(out) == 0 and SPLIT_COL in out


def test_stratum_missing_label() -> None:
    s = stratum(pd.Series(["a", None, "b"], dtype=object), 3)
    assert s.tolist() == ["a", "__null__", "b"]


def test_row_uniform_same_row_in_int_or_float_block() -> None:
    """An Arrow int64 column with nulls reaches pandas as float64 in a block that holds a
    null and as int64 in one that does not: the same row must get the same number."""
    int_block = pd.DataFrame({"id": [1, 2, 3], "k": np.array([4, 5, 6], dtype=np.int64)})
    float_block = pd.DataFrame({"id": [1, 2, 3, 9], "k": np.array([4, 5, 6, np.nan])})
    assert np.array_equal(row_uniform(int_block, 42), row_uniform(float_block, 42)[:3])


def test_assign_label_dtype_independent() -> None:
    """Bounds are computed on the driver from the whole label column (float64 when any label
    is missing); a block without missing labels arrives as int64 and must find its stratum."""
    whole = pd.DataFrame({"y": [0.0, 1.0, np.nan, 1.0, 0.0, 0.0], U_COL: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    bounds = thresholds(stratum(whole["y"], len(whole)), whole[U_COL].to_numpy(), 0.34, 0.0)
    block = pd.DataFrame({"y": np.array([0, 1], dtype=np.int64), U_COL: [0.1, 0.2]})
    out = assign(block, bounds, "y")
    assert out[SPLIT_COL].tolist() == ["test", "test"]


# --- Ray ------------------------------------------------------------------------------------------------
def pandas_blocks(df: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """``df`` cut into ``n`` frames: what ``from_pandas(df, override_num_blocks=n)`` should do.

    Ray 2.60's ``override_num_blocks`` path calls ``np.array_split`` on the DataFrame,
    which under pandas 3 returns bare ndarrays and fails; passing a list avoids it.
    """
    bounds = np.linspace(0, len(df), n + 1).astype(int)
    return [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _split(ds, root) -> dict[str, pd.DataFrame]:
    """Split ``ds`` as the ingest stage does (``plan_splits`` + ``write_block_splits`` into
    ``root``) and read each split back, sorted by id; the driver's row counts must be exact."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    plan = plan_splits(ds, target="y", stratify=True, test=0.15, validation=0.15, seed=42)
    counts = plan.rows_u.map_batches(write_block_splits, fn_kwargs={"bounds": plan.bounds, "key": plan.key,
                                     "fs": pafs.LocalFileSystem(), "root": str(root)},
                                     batch_format="pyarrow", batch_size=None).to_pandas()
    assert counts.groupby("split")["rows"].sum().to_dict() == plan.rows
    out = {name: pq.read_table(root / f"{SPLIT_COL}={name}").to_pandas().sort_values("id").reset_index(drop=True)
           for name in SPLITS}
    assert plan.rows == {k: len(v) for k, v in out.items()}
    return out


def test_split_ray(ray_session, tmp_path) -> None:
    import ray

    df = frame(2000, pos=0.05, seed=9)
    results = []
    for blocks in (1, 5):
        ds = ray.data.from_pandas(pandas_blocks(df, blocks))
        parts = _split(ds, tmp_path / f"blocks{blocks}")
        results.append(parts)
    parts = results[0]
    ids = {k: set(v["id"]) for k, v in parts.items()}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"]) and not (ids["validation"] & ids["test"])
    assert ids["train"] | ids["validation"] | ids["test"] == set(df["id"])
    for v in parts.values():
        assert list(v.columns) == list(df.columns)
    for cls, n in df["y"].value_counts().items():
        t = int((parts["test"]["y"] == cls).sum())
        va = int((parts["validation"]["y"] == cls).sum())
        assert t == round(n * 0.15), cls
        assert t + va == round(n * 0.30), cls
    # same split whatever the block layout
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(results[0][name], results[1][name])


def test_split_ray_int_target_with_nulls(ray_session, tmp_path) -> None:
    """An integer label column with a few missing labels (read from parquet/CSV as Arrow int64
    with nulls): blocks without a null arrive as int64 ("1"), the driver-side column as float64
    ("1.0"). The split must still work and be block-layout independent; missing labels are
    the validate stage's business."""
    import ray

    df = frame(2000, pos=0.05, seed=4)
    y = pa.array(df["y"].to_numpy(), type=pa.int64(), mask=np.isin(np.arange(2000), [10, 11]))
    table = pa.Table.from_pandas(df.drop(columns="y"), preserve_index=False).append_column("y", y)
    results = []
    for n_blocks in (1, 5):
        step = len(df) // n_blocks
        ds = ray.data.from_arrow([table.slice(i * step, step) for i in range(n_blocks)])
        parts = _split(ds, tmp_path / f"blocks{n_blocks}")
        assert sum(len(v) for v in parts.values()) == len(df)
        results.append({k: v["id"].tolist() for k, v in parts.items()})
    assert results[0] == results[1]


def test_split_ray_block_layout_with_nullable_int_feature(ray_session, tmp_path) -> None:
    """A row's split must not depend on whether its block holds a null in an int column."""
    import ray

    df = frame(2000, pos=0.05, seed=6)
    k = pa.array(np.arange(2000) % 13, type=pa.int64(), mask=np.isin(np.arange(2000), [5]))
    table = pa.Table.from_pandas(df, preserve_index=False).append_column("k", k)
    results = []
    for n_blocks in (1, 5):
        step = len(df) // n_blocks
        ds = ray.data.from_arrow([table.slice(i * step, step) for i in range(n_blocks)])
        parts = _split(ds, tmp_path / f"blocks{n_blocks}")
        results.append({k_: v["id"].tolist() for k_, v in parts.items()})
    assert results[0] == results[1]


def test_column_hashes_same_for_every_string_representation() -> None:
    """A text column hashes alike as pandas str, Arrow-backed, object or categorical, missing included."""
    from raypipe.columns import column_hashes

    values = ["b", None, "a", "b", None]
    forms = [pd.Series(values, dtype="str"), pd.Series(values, dtype=pd.ArrowDtype(pa.large_string())),
             pd.Series(values, dtype=object), pd.Series(values, dtype="category")]
    hashes = [column_hashes(s) for s in forms]
    for h in hashes[1:]:
        assert np.array_equal(h, hashes[0])
    assert hashes[0][1] == hashes[0][4] == np.iinfo(np.uint64).max and hashes[0][0] == hashes[0][3] != hashes[0][2]
    ints = column_hashes(pd.Series([1, 2, None], dtype="Int64"))
    assert np.array_equal(ints, column_hashes(pd.Series([1.0, 2.0, np.nan])))


def test_object_columns_are_not_merged_by_value_order() -> None:
    """1 and 1.0 in an object column are different texts; factorising the raw objects would
    merge them into whichever came first, so a block's order would change hashes and strata."""
    from raypipe.columns import column_hashes

    a = pd.Series([1, 1.0, None, "x"], dtype=object)
    b = pd.Series([1.0, 1, None, "x"], dtype=object)
    assert np.array_equal(column_hashes(a), column_hashes(b)[[1, 0, 2, 3]])
    assert column_hashes(a)[0] != column_hashes(a)[1]
    assert stratum(a, 4).tolist() == ["1", "1.0", "__null__", "x"]
    assert stratum(b, 4).tolist() == ["1.0", "1", "__null__", "x"]


def test_a_regression_target_is_not_stratified_by_value(ray_session, tmp_path) -> None:
    """Diabetes (442 rows, 214 distinct targets): stratifying by value made strata of one to three rows that
    each rounded to no test row (29 test rows instead of ~66)."""
    import raypipe
    from raypipe.progress import Progress

    spec = {"name": "t-split-reg", "storage": str(tmp_path / "store"),
            "data": {"source": {"type": "builtin", "name": "diabetes"}, "target": "target", "task": "regression"},
            "model": {"kind": "sklearn:sklearn.linear_model:Ridge"}}
    rows = raypipe.run(spec, until="ingest", progress=Progress(quiet=True)).outputs["ingest"].outputs.rows
    assert sum(rows.values()) == 442
    assert abs(rows["test"] - 0.15 * 442) <= 5 and abs(rows["validation"] - 0.15 * 442) <= 5, rows
