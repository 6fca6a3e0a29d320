"""``tune.space``: distributions over dotted spec paths, and applying a sample to a spec.

    tune:
      space:
        train.lr: {loguniform: [1.0e-4, 1.0e-1]}
        model.params.hidden: {choice: [[64], [128, 64]]}
        model.params.max_depth: {randint: [2, 12]}      # upper bound exclusive, as numpy's
        train.batch_size: {grid: [256, 1024]}

Only ``train.*`` and ``model.params.*`` can be tuned: ingest, validation and the fitted
features are computed once, before the search, and shared by every trial.

Grid points run in a seeded random order (``tune.seed``), not in the order they are
written. ASHA decides asynchronously: a trial that reaches a rung is compared with the
trials recorded there *so far*, so a grid written from worst to best (small to large
learning rate, small to large network) would see almost every trial beat its
predecessors and be promoted. The grid's combinations therefore travel to Tune as one
``grid_search`` over shuffled points under the key ``grid``; :func:`flat` undoes it.
"""
from __future__ import annotations

import copy
import itertools
import random
from typing import Any

GRID = "grid"  # the one Tune key holding the grid's points (no spec path is named so)


def search_space(space: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Ray Tune's param_space: one key per sampled dotted path, plus :data:`GRID` for the grid's shuffled points."""
    from ray import tune

    out: dict[str, Any] = {}
    grid = {path: dist["grid"] for path, dist in space.items() if "grid" in dist}
    if grid:
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        random.Random(seed).shuffle(points)
        out[GRID] = tune.grid_search(points)
    for path, dist in space.items():
        kind, arg = next(iter(dist.items()))
        if kind == "uniform":
            out[path] = tune.uniform(*arg)
        elif kind == "loguniform":
            out[path] = tune.loguniform(*arg)
        elif kind == "randint":
            out[path] = tune.randint(int(arg[0]), int(arg[1]))
        elif kind == "choice":
            out[path] = tune.choice(arg)
    return out


def flat(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as ``{dotted path: value}``: the grid point's paths lifted out of :data:`GRID`."""
    out = {k: v for k, v in config.items() if k != GRID}
    out.update(config.get(GRID) or {})
    return out


def trial_spec(spec: Any, sample: dict[str, Any]) -> Any:
    """The spec of one trial: each dotted path of ``sample`` set, ``tune`` removed (a trial trains one configuration).

    Built with ``model_copy(update=...)`` from the validated spec: the paths were checked
    when the spec was (``tune.space`` takes only ``train.<field>`` and ``model.params.<name>``).
    """
    train: dict[str, Any] = {}
    params = copy.deepcopy(spec.model.params)
    for path, value in flat(sample).items():
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from Tune's samplers
        section, *rest = path.split(".")
        if section == "train":
            train[rest[0]] = value
            continue
        node = params
        for key in rest[1:-1]:  # model.params.<a>.<b>: nested parameters
            node = node.setdefault(key, {})
        node[rest[-1]] = value
    return spec.model_copy(update={"train": spec.train.model_copy(update=train),
                                   "model": spec.model.model_copy(update={"params": params}), "tune": None})


def trial_count(space: dict[str, dict[str, Any]], num_samples: int) -> int:
    """How many trials Tune runs: ``num_samples`` times every combination of the grid values."""
    n = num_samples
    for dist in space.values():
        if "grid" in dist:
            n *= len(dist["grid"])
    return n
