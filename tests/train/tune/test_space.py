"""``tune.space``: checked in the spec, turned into Ray Tune's distributions, applied to a spec."""
from __future__ import annotations

import numpy as np
import pytest

import raypipe
from raypipe.errors import SpecError
from raypipe.train.metrics import f1_from_counts, validation_metrics
from raypipe.train.tune.space import flat, search_space, trial_count, trial_spec

BASE = {"name": "t", "data": {"source": {"type": "builtin", "name": "iris"}, "target": "target"}}


def spec(**tune):
    return raypipe.load_spec({**BASE, "tune": {"space": {"train.lr": {"loguniform": [1e-4, 1e-1]}}, **tune}})


def test_defaults_and_metric_by_task() -> None:
    t = spec().tune
    assert (t.scheduler, t.search, t.num_samples, t.metric, t.grace_period) == ("asha", "random", 8, None, 1)
    from raypipe.train.tune.search import resolved_metric

    assert resolved_metric(spec()) == ("val_f1", "max")
    reg = raypipe.load_spec({**BASE, "data": {"source": {"type": "builtin", "name": "diabetes"}, "target": "target",
                                              "task": "regression"},
                             "tune": {"space": {"train.lr": {"uniform": [0.001, 0.01]}}}})
    assert resolved_metric(reg) == ("val_rmse", "min")
    assert resolved_metric(spec(metric="val_loss")) == ("val_loss", "min")


@pytest.mark.parametrize("space, match", [
    ({"features.numeric.scale": {"choice": ["standard"]}}, "only train.<field> and model.params.<name> can be tuned"),
    ({"train.learning_rate": {"uniform": [0, 1]}}, "train has no field 'learning_rate'"),
    ({"train.lr": {"normal": [0, 1]}}, "write one of"),
    ({"train.lr": {"uniform": [1, 0]}}, r"give \[low, high\] with low < high"),
    ({"train.lr": {"loguniform": [0, 1]}}, "bounds must be > 0"),
    ({"model.params.hidden": {"choice": []}}, "non-empty list"),
    ({}, "tune.space is empty"),
])
def test_bad_space_names_the_path_and_the_fix(space, match) -> None:
    with pytest.raises(SpecError, match=match):
        raypipe.load_spec({**BASE, "tune": {"space": space}})


def test_metric_and_task_checks() -> None:
    with pytest.raises(SpecError, match="'val_rmse' is not reported by classification trials"):
        spec(metric="val_rmse")
    with pytest.raises(SpecError, match="search needs a task whose trials report a metric"):
        raypipe.load_spec({**BASE, "data": {"source": {"type": "builtin", "name": "iris"}, "task": "clustering"},
                           "model": {"kind": "sklearn:sklearn.cluster:KMeans"},
                           "tune": {"space": {"model.params.n_clusters": {"randint": [2, 5]}}}})


def test_search_space_and_trial_spec() -> None:
    from ray import tune

    space = {"train.lr": {"loguniform": [1e-4, 1e-1]}, "model.params.hidden": {"choice": [[8], [16, 8]]},
             "model.params.depth": {"randint": [2, 5]}, "train.batch_size": {"grid": [64, 128]}}
    ts = search_space(space)
    assert isinstance(ts["train.lr"], tune.search.sample.Float) and ts["train.lr"].lower == 1e-4
    assert sorted(p["train.batch_size"] for p in ts["grid"]["grid_search"]) == [64, 128]
    assert isinstance(ts["model.params.depth"], tune.search.sample.Integer)
    assert trial_count(space, 3) == 6
    base = spec()
    out = trial_spec(base, {"train.lr": np.float64(0.01), "model.params.hidden": [16, 8], "model.params.opt.beta": 0.9})
    assert out.train.lr == 0.01 and type(out.train.lr) is float and out.tune is None
    assert out.model.params == {"hidden": [16, 8], "opt": {"beta": 0.9}}
    assert base.train.lr == 0.001 and base.model.params == {} and base.tune is not None  # the base is not changed
    assert raypipe.load_spec(out.model_dump(mode="json", by_alias=True)).train.lr == 0.01  # still a valid spec
    nested = trial_spec(base, {"train.lr": 0.01, "grid": {"train.batch_size": 128}})
    assert nested.train.batch_size == 128 and nested.train.lr == 0.01


def test_grid_points_run_in_a_seeded_shuffled_order() -> None:
    """ASHA compares each trial with those recorded before it: a sorted grid must not reach Tune sorted."""
    from ray.tune.search.variant_generator import generate_variants

    space = {"train.lr": {"grid": [1e-4, 1e-3, 1e-2, 1e-1]}, "model.params.hidden": {"grid": [[8], [16], [32], [64]]},
             "train.batch_size": {"choice": [32, 64]}}
    written = [(lr, h) for lr in space["train.lr"]["grid"] for h in space["model.params.hidden"]["grid"]]

    def order(seed: int) -> list[tuple[float, list[int]]]:
        configs = [flat(c) for _, c in generate_variants(search_space(space, seed))]
        assert all(c["train.batch_size"] in (32, 64) for c in configs)
        return [(c["train.lr"], c["model.params.hidden"]) for c in configs]

    first = order(0)
    assert sorted(first) == sorted(written) and len(first) == 16  # every point once
    assert first != written and first == order(0) and first != order(1)


def test_f1_from_counts_matches_scikit_learn() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for k in (2, 4):
        y, pred = rng.integers(0, k, 300), rng.integers(0, k - 1, 300)  # one class never predicted
        tp = np.bincount(y[y == pred], minlength=k)
        got = f1_from_counts(tp, np.bincount(pred, minlength=k), np.bincount(y, minlength=k))
        want = f1_score(y, pred, average="binary" if k == 2 else "macro", zero_division=0)
        assert got == pytest.approx(want)


def test_validation_metrics_by_task() -> None:
    y = np.array([0, 1, 1, 0])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    m = validation_metrics("classification", y, scores, 2)
    assert m["val_accuracy"] == 0.75 and m["val_f1"] == pytest.approx(2 / 3) and m["val_loss"] > 0
    r = validation_metrics("regression", np.array([1.0, 2.0]), np.array([1.0, 4.0]), 1)
    assert r == {"val_loss": 2.0, "val_rmse": pytest.approx(np.sqrt(2.0))}
