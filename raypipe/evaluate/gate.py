"""The evaluation gate: absolute limits, overfitting gap, and the champion comparison."""
from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = {"rmse", "mae"}


def verdict(gate: Any, test: dict[str, Any], train: dict[str, Any] | None,
            champion: dict[str, Any] | None) -> dict[str, Any]:
    """Check every gate rule; return each check with its numbers and the outcome."""
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
        m = _main_metric(test)
        gap = train[m] - test[m] if m not in LOWER_IS_BETTER else test[m] - train[m]
        check(f"train-test {m} gap <= {gate.max_overfit_gap:g}", gap, gate.max_overfit_gap, gap <= gate.max_overfit_gap)
    if gate.vs_champion is not None and champion is not None:
        m, delta = gate.vs_champion.metric, gate.vs_champion.min_delta
        cand, champ = test.get(m), champion.get(m)
        better = None if cand is None or champ is None else (champ - cand if m in LOWER_IS_BETTER else cand - champ)
        check(f"{m} vs champion >= +{delta:g}", better, delta, better is not None and better >= delta)
    failures = [f"{c['check']}: got {c['value']!r}" for c in checks if not c["passed"]]
    return {"passed": not failures, "checks": checks, "failures": failures}


def _main_metric(metrics: dict[str, Any]) -> str:
    return "f1" if "f1" in metrics else "rmse"
