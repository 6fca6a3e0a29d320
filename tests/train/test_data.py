"""From validated rows to (features, label) datasets: what the train stage materialises."""
from __future__ import annotations

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
