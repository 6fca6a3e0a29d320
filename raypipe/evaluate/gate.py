"""The evaluation gate: absolute limits, overfitting gap, slice gap, the baselines, and the champion comparison.

Every check is stored with its value and limit, passed or not, so the verdict can be
audited later from the version's ``metrics.json``.
"""
from __future__ import annotations

from typing import Any

from raypipe.evaluate.baselines import TRIVIAL_METRIC
from raypipe.evaluate.metrics import higher_is_better_gap
from raypipe.tasks import TASKS


def verdict(gate: Any, task: str, test: dict[str, Any], *, train: dict[str, Any] | None = None,
            held_out: dict[str, Any] | None = None, champion: dict[str, Any] | None = None,
            slices: dict[str, dict[str, Any]] | None = None,
            baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every gate rule; return each check with its numbers and the outcome.

    Args:
        gate: the spec's ``evaluate.gate``.
        task: the data task (decides the main metric and directions).
        test: the candidate's test metrics.
        train, held_out: train and validation metrics for the overfitting gap
            (``held_out`` falls back to ``test`` when the spec has no validation split).
        champion: the champion's metrics on the same test split (None: no champion).
        slices: sliced metrics by column (see :mod:`raypipe.evaluate.slices`).
        baselines: the baselines scored on the same test split (see :mod:`raypipe.evaluate.baselines`;
            None: the task has none, and their checks are skipped).
    """
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, ok: bool) -> None:
        checks.append({"check": name, "value": value, "limit": limit, "passed": bool(ok)})

    for m, lo in gate.min.items():
        v = test.get(m)
        check(f"{m} >= {lo:g}", v, lo, v is not None and v >= lo)
    for m, hi in gate.max.items():
        v = test.get(m)
        check(f"{m} <= {hi:g}", v, hi, v is not None and v <= hi)
    if gate.max_overfit_gap is not None and train is not None:
        m, other = TASKS[task].main_metric, held_out or test
        gap = None if train.get(m) is None or other.get(m) is None else higher_is_better_gap(m, train[m], other[m])
        check(f"train vs validation {m} gap <= {gate.max_overfit_gap:g}", gap, gate.max_overfit_gap,
              gap is not None and gap <= gate.max_overfit_gap)
    if gate.max_slice_gap is not None:
        for column, s in (slices or {}).items():
            check(f"{s['metric']} gap across {column!r} slices <= {gate.max_slice_gap.max:g}", s.get("gap"),
                  gate.max_slice_gap.max, s.get("gap") is None or s["gap"] <= gate.max_slice_gap.max)
    trivial = ((baselines or {}).get("trivial") or {}).get("test")
    if gate.beat_trivial_baseline and trivial is not None and task in TRIVIAL_METRIC:
        m = TRIVIAL_METRIC[task]
        # R²: any constant answer scores at most 0 on the test split, so 0 is the mean's best.
        limit = max(trivial.get(m) or 0.0, 0.0) if m == "r2" else trivial.get(m)
        v = test.get(m)
        check(f"{m} >= trivial baseline ({baselines['trivial']['model']})", v, limit,
              v is not None and limit is not None and v >= limit)
    if gate.min_lift_over_baseline is not None and baselines is not None:
        m, lift, linear = TASKS[task].main_metric, gate.min_lift_over_baseline, baselines.get("linear") or {}
        base = (linear.get("test") or {}).get(m)
        cand = test.get(m)
        better = None if cand is None or base is None else higher_is_better_gap(m, cand, base)
        check(f"{m} lift over linear baseline ({linear.get('model')}) >= {lift:+g}", better, lift,
              better is not None and better >= lift)
    if gate.vs_champion is not None and champion is not None:
        m, delta = gate.vs_champion.metric, gate.vs_champion.min_delta
        cand, champ = test.get(m), champion.get(m)
        better = None if cand is None or champ is None else higher_is_better_gap(m, cand, champ)
        check(f"{m} vs champion v{champion.get('version')} >= {delta:+g}", better, delta,
              better is not None and better >= delta)
    failures = [f"{c['check']}: got {_fmt(c['value'])}" for c in checks if not c["passed"]]
    return {"passed": not failures, "checks": checks, "failures": failures}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"

