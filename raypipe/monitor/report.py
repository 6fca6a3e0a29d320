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
HISTORY = 30  # windows in the performance-over-windows picture, this one included
MAX_HISTORY_METRICS = 4


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


def performance_history(windows: Any, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance of the last :data:`HISTORY` windows of ``report``'s version, oldest first, ending
    with ``report``'s own: what ``drift.html`` draws as performance over windows.

    ``windows`` is ``<storage>/monitor/<pipeline>/``; window ids start with their UTC time, so
    their sorted names are in time order, and only sealed windows (``_COMPLETE.json``) count.
    """
    def entry(r: dict[str, Any]) -> dict[str, Any] | None:
        perf = r.get("performance") or {}
        metrics = {k: v for k, v in (perf.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if not metrics:
            return None
        return {"window_id": r["window_id"], "kind": perf.get("kind"), "rows": r.get("rows"), "metrics": metrics}

    earlier: list[dict[str, Any]] = []
    for wid in reversed(windows.listdir()):
        if len(earlier) == HISTORY - 1:
            break
        if wid == report["window_id"] or not windows.is_complete(wid):
            continue
        try:
            r = windows.read_json(wid, "report.json")
        except (OSError, ValueError):  # a window being removed, or not a report: not part of the history
            continue
        e = entry(r) if r.get("version") == report["version"] else None
        if e is not None:
            earlier.append(e)
    now = entry(report)
    return earlier[::-1] + ([now] if now else [])


def history_plot(history: list[dict[str, Any]]) -> bytes:
    """One line per metric across windows; estimated points hollow, measured ones filled."""
    names = list(dict.fromkeys(k for h in history for k in h["metrics"]))[:MAX_HISTORY_METRICS]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(history))
    for name in names:
        y = np.array([h["metrics"].get(name, np.nan) for h in history], dtype=np.float64)
        line, = ax.plot(x, y, label=name)
        est = np.array([h["kind"] == "estimated" for h in history])
        ax.scatter(x[~est], y[~est], color=line.get_color(), zorder=3)
        ax.scatter(x[est], y[est], facecolors="none", edgecolors=line.get_color(), zorder=3)
    labels = [h["window_id"][:15].replace("T", " ") for h in history]  # 20261206T135708: the window's UTC time
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=7)
    ax.set_title("performance over windows (hollow: estimated without labels)", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def write_report(store: Any, report: dict[str, Any], plan: dict[str, Any], doc: dict[str, Any],
                 history: list[dict[str, Any]] | None = None) -> list[str]:
    """Write ``drift.html`` and ``plots/*.png`` into ``store``; return the plot paths.

    ``history``: :func:`performance_history`; with two windows or more, a picture of it.
    """
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
    history = history or []
    if len(history) >= 2:
        store.write_bytes("plots/performance.png", history_plot(history))
    html = templates("raypipe.monitor").get_template("drift.html.j2").render(report=report, columns=entries,
                                                                           plots=plots, history=history)
    store.write_bytes("drift.html", html.encode())
    return [p for _, p in plots] + (["plots/performance.png"] if len(history) >= 2 else [])
