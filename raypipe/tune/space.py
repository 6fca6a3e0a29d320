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

KINDS = ("uniform", "loguniform", "randint", "choice", "grid")
GRID = "grid"  # the one Tune key holding the grid's points (no spec path is named so)


def check_space(space: dict[str, dict[str, Any]], train_fields: set[str]) -> None:
    """Raise ``ValueError`` naming the path and the fix for a space the search cannot use."""
    for path, dist in space.items():
        if len(dist) != 1 or next(iter(dist)) not in KINDS:
            raise ValueError(f"tune.space[{path!r}] = {dist!r}: write one of {list(KINDS)}, e.g. {{uniform: [0, 1]}}")
        kind, arg = next(iter(dist.items()))
        parts = path.split(".")
        if parts[0] == "train" and len(parts) == 2:
            if parts[1] not in train_fields:
                raise ValueError(f"tune.space[{path!r}]: train has no field {parts[1]!r}; use one of {sorted(train_fields)}")
        elif not (parts[:2] == ["model", "params"] and len(parts) >= 3 and all(parts)):
            raise ValueError(f"tune.space[{path!r}]: only train.<field> and model.params.<name> can be tuned "
                             "(data, validation and features are computed once, before the search)")
        if kind in ("uniform", "loguniform", "randint"):
            if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg) and arg[0] < arg[1]):
                raise ValueError(f"tune.space[{path!r}].{kind}: give [low, high] with low < high, not {arg!r}")
            if kind == "loguniform" and arg[0] <= 0:
                raise ValueError(f"tune.space[{path!r}].loguniform: bounds must be > 0, not {arg!r}")
        elif not (isinstance(arg, list) and arg):
            raise ValueError(f"tune.space[{path!r}].{kind}: give a non-empty list of values, not {arg!r}")


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


def apply(spec_data: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """A copy of the spec's data with each dotted path of ``sample`` set."""
    out = copy.deepcopy(spec_data)
    for path, value in flat(sample).items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    out.pop("tune", None)  # a trial trains one configuration
    return out


def trial_count(space: dict[str, dict[str, Any]], num_samples: int) -> int:
    """How many trials Tune runs: ``num_samples`` times every combination of the grid values."""
    n = num_samples
    for dist in space.values():
        if "grid" in dist:
            n *= len(dist["grid"])
    return n
