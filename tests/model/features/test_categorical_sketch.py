"""Fitting a categorical stays bounded: the mergeable Misra-Gries sketch (raypipe.columns.counts_sketch)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from raypipe.columns import counts_sketch, merge_counts_sketches, sketch_error
from raypipe.model.features.categorical import CategoricalEncoder


def _million_distinct_with_heavy_hitters(seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """1,000,000 distinct ids plus 8 frequent values (30 % of 1.3M rows), shuffled."""
    rng = np.random.default_rng(seed)
    heavy = {f"hot{i}": 60_000 - 5_000 * i for i in range(8)}  # 60k, 55k, ... 25k rows
    values = np.concatenate([np.char.add("id", np.arange(1_000_000).astype(str)).astype(object),
                             np.repeat(np.array(list(heavy), dtype=object), list(heavy.values()))])
    rng.shuffle(values)
    return pd.DataFrame({"ref": values}), heavy


def test_a_million_distinct_strings_fit_in_bounded_stats_with_the_true_top_values() -> None:
    frame, heavy = _million_distinct_with_heavy_hitters()
    size, blocks = 256, 8
    op = CategoricalEncoder(["ref"], max_categories=8, sketch_size=size)
    step = -(-len(frame) // blocks)
    parts = [op.partial_stats(frame.iloc[i : i + step]) for i in range(0, len(frame), step)]
    # what each block sends to the driver: at most `size` values, a few KB of JSON, not ~160k distinct values
    assert all(len(p["ref"]["values"]) <= size for p in parts)
    assert max(len(json.dumps(p)) for p in parts) < 20_000
    op.fit_from_stats(parts)
    assert op.categories_["ref"] == list(heavy)  # the true top 8, in order
    merged = merge_counts_sketches([p["ref"] for p in parts], size)
    assert len(merged["values"]) <= size and merged["n"] == len(frame)
    bound = sketch_error(merged, size)
    assert bound <= len(frame) / (size + 1)
    est = dict(zip(merged["values"], merged["counts"]))
    for value, true in heavy.items():
        assert true - bound <= est[value] <= true


def test_merging_in_any_order_keeps_the_bound() -> None:
    rng = np.random.default_rng(1)
    true = pd.Series(rng.zipf(1.3, 200_000).astype(str)).value_counts()
    chunks = np.array_split(rng.permutation(np.repeat(true.index.to_numpy(dtype=object), true.to_numpy())), 13)
    size = 64
    sketches = []
    for chunk in chunks:
        vc = pd.Series(chunk).value_counts()
        sketches.append(counts_sketch(vc.index.to_numpy(dtype=object), vc.to_numpy(), size))
    # a tree of merges (as blocks might be combined) and a flat one both stay within the bound
    tree = sketches
    while len(tree) > 1:
        tree = [merge_counts_sketches(tree[i : i + 2], size) for i in range(0, len(tree), 2)]
    for merged in (tree[0], merge_counts_sketches(sketches, size)):
        assert len(merged["values"]) <= size and merged["n"] == 200_000
        bound = sketch_error(merged, size)
        est = dict(zip(merged["values"], merged["counts"]))
        under = np.array([true[v] - est.get(v, 0) for v in true.index])
        assert under.min() >= 0 and under.max() <= bound
        assert bound <= 200_000 / (size + 1)


def test_few_distinct_values_are_counted_exactly() -> None:
    a = counts_sketch(["x", "y"], [5, 3], 4)
    b = counts_sketch(["y", "z"], [2, 9], 4)
    merged = merge_counts_sketches([a, b], 4)
    assert dict(zip(merged["values"], merged["counts"])) == {"x": 5, "y": 5, "z": 9} and sketch_error(merged, 4) == 0


def test_sketch_size_below_max_categories_is_refused() -> None:
    with pytest.raises(ValueError, match="sketch_size"):
        CategoricalEncoder(["c"], max_categories=64, sketch_size=32)
