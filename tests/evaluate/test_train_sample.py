"""The train split's metric sample is a function of the rows, not of how Ray blocks them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.evaluate.stage import _capped


def test_sample_is_the_same_for_any_block_layout(ray_session):
    import ray.data

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=6000), "c": rng.choice(["a", "b", None], 6000), "id": np.arange(6000)})
    one_block, _ = _capped(ray.data.from_pandas(df), 2000, seed=42)
    many_blocks, n = _capped(ray.data.from_pandas([df.iloc[i::7] for i in range(7)]), 2000, seed=42)
    a, b = (set(d.to_pandas()["id"]) for d in (one_block, many_blocks))
    assert n == 6000 and a == b and 1700 < len(a) < 2300
    other_seed, _ = _capped(ray.data.from_pandas(df), 2000, seed=7)
    assert set(other_seed.to_pandas()["id"]) != a
    small, n_small = _capped(ray.data.from_pandas(df.head(500)), 2000, seed=42)
    assert n_small == 500 and small.count() == 500  # under the cap: every row
