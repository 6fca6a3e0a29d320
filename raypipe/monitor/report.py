"""``drift.html`` and its pictures: reference vs window per drifted column, a table sorted by drift, performance.

Plots are drawn on ``matplotlib.figure.Figure`` objects rendered into memory (no pyplot state), as
the evaluation report's are; the page is the autoescaped Jinja2 template ``drift.html.j2`` on the
shared ``report_base.html.j2`` (inline CSS, no scripts, no external URLs).
"""
from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from raypipe.report_format import templates

MAX_PLOTS = 12  # pictures for at most this many drifted columns (the table lists every column)
MAX_BARS = 20


def _png(fig: Figure) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _shares(counts: list[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / c.sum() if c.sum() > 0 else c


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    g = lambda v: f"{v:.3g}"  # noqa: E731
    return [f"< {g(edges[0])}"] + [f"{g(a)} – {g(b)}" for a, b in zip(edges, edges[1:])] + [f"≥ {g(edges[-1])}"]


def comparison_plot(title: str, labels: list[str], reference: list[float], window: list[float]) -> bytes:
    """Side-by-side bars: the reference's share and the window's share in each bin or category."""
    ref, win = _shares(reference)[:MAX_BARS], _shares(window)[:MAX_BARS]
    labels = labels[:MAX_BARS]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ref, width=0.4, label="training (reference)", color="#8fa8c8")
    ax.bar(x + 0.2, win, width=0.4, label="window", color="#d9822b")
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_for(name: str, col: dict[str, Any], part: dict[str, Any], entry: dict[str, Any]) -> bytes | None:
    if col["kind"] in ("numeric", "text"):
        labels = _bin_labels(col["edges"])
    elif col["kind"] == "categorical":
        labels = [*col["values"], "other / unseen"]
    else:
        return None
    title = f"{name}: {entry['statistic']} = {entry['value']:.3f} (threshold {entry['threshold']:g})"
    return comparison_plot(title, labels, col["ref_counts"], part["counts"])


def plot_name(column: str) -> str:
    return "plots/" + re.sub(r"[^A-Za-z0-9_.-]", "_", column) + ".png"


def write_report(store: Any, report: dict[str, Any], plan: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """Write ``drift.html`` and ``plots/*.png`` into ``store``; return the plot paths."""
    plots: list[str] = []
    entries = sorted(report["columns"].values(), key=lambda e: -(e["value"] / e["threshold"]))
    for e in [e for e in entries if e["drifted"]][:MAX_PLOTS]:
        png = _plot_for(e["column"], plan["columns"][e["column"]], doc["columns"][e["column"]], e)
        if png is not None:
            store.write_bytes(plot_name(e["column"]), png)
            plots.append((e["column"], plot_name(e["column"])))
    for key, part in (report.get("prediction_drift") or {}).get("parts", {}).items():
        ref = plan["answer"] if key == "answer" else plan["score"]
        if part.get("drifted") and key in doc:
            labels = _bin_labels(ref["edges"]) if ref["kind"] == "numeric" else [*ref["values"], "other"]
            png = comparison_plot(f"prediction {key}: {part['statistic']} = {part['value']:.3f}", labels,
                                  part["ref_counts"], doc[key]["counts"])
            store.write_bytes(f"plots/prediction_{key}.png", png)
            plots.append((f"prediction {key}", f"plots/prediction_{key}.png"))
    html = templates("raypipe.monitor").get_template("drift.html.j2").render(report=report, columns=entries,
                                                                           plots=plots)
    store.write_bytes("drift.html", html.encode())
    return [p for _, p in plots]
