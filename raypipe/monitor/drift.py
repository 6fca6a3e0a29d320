"""Per-column drift decisions from a window's merged counts and the reference's.

Every column gets every statistic its kind has (numeric: PSI over the reference's quantile
bins and the Wasserstein distance in reference standard deviations; categorical: PSI and the
Jensen-Shannon distance over the reference's categories plus one bucket for the rest, unseen
values included; datetime columns as categorical columns of their weekday and hour of day,
``<column>:weekday`` and ``<column>:hour``, with the share of dates outside the training range
reported beside them; text: PSI of lengths and the out-of-vocabulary rate; images: the pixel
mean's shift in reference standard deviations; all: the change in the share of missing values).
The decision uses ``monitor.drift.method``'s statistic against ``threshold`` (or ``per_column``:
a datetime part's own name, else its column's), plus the null-rate change against
``max_null_rate_change``.
"""
from __future__ import annotations

from typing import Any

from raypipe.monitor.stats import jensen_shannon, psi, wasserstein_binned

IMAGE_SHIFT = 0.25  # an image column drifts when its pixel mean moves by more reference stds (or per_column)
OOV_CHANGE = 0.1  # ... a text column when its out-of-vocabulary rate rises by more


def _window_means(part: dict[str, Any]) -> list[float | None]:
    return [s / c if c else None for s, c in zip(part["sums"], part["counts"])]


def column_statistics(col: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Every statistic of one column (the plan's entry, the window's merged counts)."""
    kind = col["kind"]
    out: dict[str, Any] = {}
    if kind == "numeric":
        out["psi"] = psi(col["ref_counts"], part["counts"])
        out["jensenshannon"] = jensen_shannon(col["ref_counts"], part["counts"])
        out["wasserstein"] = wasserstein_binned(col["ref_means"], col["ref_counts"], _window_means(part),
                                                part["counts"], col.get("ref_std"))
    elif kind == "categorical":
        out["psi"] = psi(col["ref_counts"], part["counts"])
        out["jensenshannon"] = jensen_shannon(col["ref_counts"], part["counts"])
        n = sum(part["counts"])
        out["unseen_rate"] = part["unseen"] / n if n else 0.0
        out["unseen_examples"] = list(part.get("unseen_examples", {}))
        if col.get("date") is not None:
            out.update(_date_context(col["date"], part))
    elif kind == "text":
        out["psi"] = psi(col["ref_counts"], part["counts"])
        out["jensenshannon"] = jensen_shannon(col["ref_counts"], part["counts"])
        out["oov_rate"] = part["oov"] / part["tokens"] if part["tokens"] else None
        out["ref_oov_rate"] = col.get("ref_oov_rate")
    elif kind == "image":
        n = part["px_n"]
        mean = part["px_sum"] / n if n else None
        ref_mean, ref_std = col.get("ref_pixel_mean"), col.get("ref_pixel_std")
        out["pixel_mean"] = mean
        out["pixel_shift"] = (abs(mean - ref_mean) / ref_std if mean is not None and ref_mean is not None and ref_std
                              else 0.0)
    return out


def _date_context(date: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """What a datetime part reports without deciding on it: its column and part, the training range
    and the share of the window's dates outside it (dates move forward: a window after training is
    expected, and useful to know)."""
    dated = part.get("dated", 0)
    return {"date_column": date["column"], "date_part": date["part"], "training_range": date["range"],
            "outside_training_range": part.get("outside", 0) / dated if dated else None}


def threshold_for(name: str, col: dict[str, Any], cfg: Any, default: float) -> float:
    """``per_column``'s limit for a column: its own name, then (a datetime part) its source column's."""
    source = (col.get("date") or {}).get("column")
    return float(cfg.per_column.get(name, cfg.per_column.get(source, default) if source else default))


def _statistic(kind: str, method: str) -> str:
    if kind == "image":
        return "pixel_shift"
    if method == "wasserstein" and kind != "numeric":
        return "jensenshannon"  # no order among categories or lengths' bins to move mass along
    return method


def decide_column(name: str, col: dict[str, Any], part: dict[str, Any], valid_rows: int, cfg: Any,
                  enough: bool) -> dict[str, Any]:
    """One column's entry of the report: ``{statistic, value, threshold, drifted, ...}``.

    ``drifted`` is None when the window has too few rows to say (``min_rows``).
    """
    stats = column_statistics(col, part)
    statistic = _statistic(col["kind"], cfg.method)
    default = IMAGE_SHIFT if statistic == "pixel_shift" else cfg.threshold
    threshold = threshold_for(name, col, cfg, default)
    value = float(stats[statistic])
    null_rate = part["nulls"] / valid_rows if valid_rows else 0.0
    null_change = null_rate - float(col.get("ref_null_rate") or 0.0)
    reasons = []
    if value > threshold:
        reasons.append(f"{statistic} {value:.3f} > {threshold:g}")
    if abs(null_change) > cfg.max_null_rate_change:
        reasons.append(f"missing values {null_rate:.1%} (training {col.get('ref_null_rate') or 0:.1%})")
    if col["kind"] == "text" and stats.get("oov_rate") is not None and stats.get("ref_oov_rate") is not None \
            and stats["oov_rate"] - stats["ref_oov_rate"] > OOV_CHANGE:
        reasons.append(f"out-of-vocabulary rate {stats['oov_rate']:.1%} (training {stats['ref_oov_rate']:.1%})")
    return {"column": name, "kind": col["kind"], "statistic": statistic, "value": value, "threshold": threshold,
            "drifted": bool(reasons) if enough else None, "reasons": reasons if enough else [],
            "null_rate": null_rate, "null_rate_change": null_change, **stats}
