"""The train split's metric sample is a function of the rows, not of how Ray blocks them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.evaluate.scoring import sample_rows
from raypipe.evaluate.stage import _sample


def test_sample_is_the_same_for_any_block_layout():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=6000), "c": rng.choice(["a", "b", None], 6000), "id": np.arange(6000)})
    how = _sample(len(df), 2000, seed=42)
    one_block = set(sample_rows(df, how["fraction"], int(how["seed"]))["id"])
    many_blocks = set().union(*(sample_rows(df.iloc[i::7], how["fraction"], int(how["seed"]))["id"]
                                for i in range(7)))
    assert one_block == many_blocks and 1700 < len(one_block) < 2300
    other = _sample(len(df), 2000, seed=7)
    assert set(sample_rows(df, other["fraction"], int(other["seed"]))["id"]) != one_block
    assert _sample(500, 2000, seed=42) is None  # under the cap: every row
