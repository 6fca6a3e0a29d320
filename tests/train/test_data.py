"""From validated rows to (features, label) datasets: what the train stage materialises."""
from __future__ import annotations

import pytest

from raypipe.train.data import estimated_mb, materialize_small


def test_estimated_size_is_float32_features_and_an_8_byte_label() -> None:
    assert estimated_mb(2**20, 10) == 48.0
    assert estimated_mb(0, 10) == 0.0


def test_small_splits_are_materialised_large_ones_stream(ray_session) -> None:
    import ray.data
    from ray.data.dataset import MaterializedDataset

    lazy = {"train": ray.data.range(1000).map_batches(lambda b: b), "validation": ray.data.range(200)}
    rows = {"train": 1000, "validation": 200}
    out, mb = materialize_small(lazy, rows, n_features=10, limit_mb=1.0)
    assert mb == estimated_mb(1200, 10) and all(isinstance(d, MaterializedDataset) for d in out.values())
    assert out["train"].count() == 1000 and out["validation"].count() == 200
    kept, none = materialize_small(lazy, rows, n_features=10, limit_mb=0.01)  # 0.055 MB is not under 0.01
    assert none is None and kept is lazy
    assert materialize_small(lazy, rows, n_features=10, limit_mb=0)[1] is None  # 0: always stream


def _indexed(n: int, blocks: int):
    """A materialised ``{"x", "y"}`` dataset whose row ``i`` is ``x = [i, i, i]``, ``y = i``, in ``blocks`` blocks."""
    import numpy as np
    import ray.data

    items = [{"x": np.full(3, i, dtype=np.float64), "y": i} for i in range(n)]
    return ray.data.from_items(items, override_num_blocks=blocks).materialize()


def test_rows_are_read_from_the_blocks_holding_them(ray_session) -> None:
    import numpy as np

    from raypipe.train.data import block_rows, read_rows

    pieces = block_rows(_indexed(10, 3))
    assert len(pieces) == 3 and sum(end - first for _, first, end in pieces) == 10
    x, y = read_rows(pieces)
    assert y.tolist() == list(range(10)) and x.shape == (10, 3) and (x[:, 0] == y).all()
    assert read_rows(pieces, 2, 9)[1].tolist() == list(range(2, 9))  # across both block boundaries
    assert read_rows(pieces, 4, 4)[0].shape[0] == 0  # an empty share: no rows, no error
    ref, _, end = pieces[0]
    assert read_rows([(ref, 1, end), *pieces[1:]])[1].tolist() == list(range(1, 10))  # a bundle's slice of a block
    assert np.array_equal(read_rows(pieces, 7)[1], np.arange(7, 10))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_each_rank_reads_its_own_share_equal_for_training_every_row_for_validation(ray_session, world) -> None:
    import torch

    from raypipe.train.data import block_rows
    from raypipe.train.torch_trainer import _rank_rows

    pieces = block_rows(_indexed(11, 3))
    dtypes = {"x": torch.float32, "y": torch.int64}
    equal = [_rank_rows(pieces, r, world, True, dtypes) for r in range(world)]
    assert len({len(c.y) for c in equal}) == 1  # every rank takes as many steps (DDP)
    seen = torch.cat([c.y for c in equal]).tolist()
    assert len(seen) == len(set(seen)) and 0 <= 11 - len(seen) <= world - 1  # disjoint; at most world - 1 left out
    assert equal[0].x.dtype == torch.float32 and equal[0].y.dtype == torch.int64
    every = [_rank_rows(pieces, r, world, False, dtypes) for r in range(world)]
    assert torch.cat([c.y for c in every]).tolist() == list(range(11))


def test_small_materialised_splits_feed_the_workers_from_their_blocks_others_stream(ray_session) -> None:
    import ray.data

    from raypipe.train.torch_trainer import block_feed

    splits = {"train": _indexed(20, 2), "validation": _indexed(5, 1)}
    feed = block_feed(splits, limit_mb=1)
    assert set(feed) == {"train", "validation"} and sum(e - f for _, f, e in feed["train"]) == 20
    assert block_feed(splits, limit_mb=1e-4) is None  # over a worker's shard cache: stream
    assert block_feed(splits, limit_mb=0) is None  # train.cache_shards_mb: 0 streams every epoch
    assert block_feed({**splits, "train": ray.data.range(20)}, limit_mb=1) is None  # not materialised
