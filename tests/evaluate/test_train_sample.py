"""The train split's metric sample is a function of the rows, not of how Ray blocks them; scoring batches
are as long as a bounded feature matrix allows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.evaluate.scoring import BATCH_BYTES, batch_rows, sample_rows
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


def test_scoring_batches_are_long_for_narrow_data_and_bounded_for_wide():
    assert batch_rows(40) == 32768  # the 200,000-row benchmark's 40 features: its splits in 7 batches, not 51
    assert batch_rows(1000) == 4096  # wide: no longer than before
    assert batch_rows(0) == 4096  # no fitted features (raw images, text, audio): the width is unknown
    mid = batch_rows(300)
    assert 4096 < mid < 32768 and mid * 300 * 8 <= BATCH_BYTES < (mid + 1) * 300 * 8
