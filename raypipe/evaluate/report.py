"""A human-friendly evaluation report: PNG plots and one self-contained ``report.html``.

Plots are drawn on ``matplotlib.figure.Figure`` objects and rendered with the Agg
canvas into memory, so no pyplot figure or global backend is touched. Where
scikit-learn has a display for a plot (confusion matrix, ROC, precision-recall,
calibration, prediction error) its ``Display`` class draws on the figure's axes.
The HTML page is rendered from ``report.html.j2`` (autoescaped, so every piece of
text is escaped) and uses inline CSS only (no JS, no external URLs).

Plots by ``doc["task"]``: classification (confusion matrix, ROC, precision-recall,
calibration), clustering (cluster sizes, PCA projection), anomaly (score histogram;
with labels also ROC, precision-recall, confusion matrix) and regression (everything
else). Slice bar charts are added for every task.
"""
from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay
from sklearn.decomposition import PCA

from raypipe.report_format import fmt as _fmt, templates

MAX_POINTS = 5000  # scatter plots are subsampled to this many points
MAX_CURVE_CLASSES = 10  # one-vs-rest curves are drawn for at most this many classes
MAX_BARS = 30  # per-slice bar charts show the largest slices only
MAX_LEGEND = 10  # the cluster projection gets a legend up to this many clusters, a colour bar beyond
_NON_SCALAR = {"confusion_matrix", "per_class"}


def write_report(store: Any, doc: dict[str, Any], *, y: Any, pred: Any, scores: Any = None,
                 class_names: list[str] | None = None, x: Any = None) -> list[str]:
    """Write report.html and plots/*.png into `store`; return the relative paths written.

    `y` may be None for clustering and anomaly tasks (no target / no labels); `x` is the
    feature matrix a clusterer saw and is used for clustering only.
    """
    task = doc.get("task")
    y = None if y is None else np.asarray(y)
    pred = np.asarray(pred)
    scores = None if scores is None else np.asarray(scores)
    if task == "classification":
        plots = _classification_plots(doc, y, pred, scores, class_names)
    elif task == "clustering":
        plots = _clustering_plots(pred, None if x is None else np.asarray(x, dtype=float))
    elif task == "anomaly":
        plots = _anomaly_plots(doc, y, pred, scores)
    else:
        plots = _regression_plots(y, pred)
    plots.update(_slice_plots(doc.get("slices") or {}, used=set(plots)))
    return _write(store, doc, plots)


def _write(store: Any, doc: dict[str, Any], plots: dict[str, bytes]) -> list[str]:
    """Write ``plots/<name>.png`` and ``report.html``; return the relative paths written."""
    for name, png in plots.items():
        store.write_bytes(f"plots/{name}.png", png)
    store.write_bytes("report.html", _html(doc, list(plots)).encode())
    return [f"plots/{name}.png" for name in plots] + ["report.html"]


# -- plots ----------------------------------------------------------------------------
UNIT_MARGINS = {"left": 0.12, "right": 0.96, "bottom": 0.11, "top": 0.93}  # a 6x5 plot of [0, 1] x [0, 1]


def _png(fig: Figure, unit_square: bool = False) -> bytes:
    """The figure as a PNG. ``unit_square``: one 6x5-inch plot whose axes both run over [0, 1] (ROC,
    precision-recall, calibration), whose tick labels and margins are known: fixed margins instead of
    ``tight_layout``, which measures every label's extent (a third of a plot's time)."""
    buf = BytesIO()
    if unit_square:
        fig.subplots_adjust(**UNIT_MARGINS)
    else:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _text(s: Any) -> str:
    """Plain text for matplotlib labels (a ``$`` would start mathtext)."""
    return str(s).replace("$", r"\$")


def _subsample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _confusion_plot(cm: np.ndarray, names: list[str]) -> bytes:
    side = min(16.0, 0.6 * len(names) + 3)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    skm.ConfusionMatrixDisplay(cm, display_labels=[_text(n) for n in names]).plot(ax=ax, cmap="Blues", xticks_rotation=45)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix")
    return _png(fig)


def _curve_plots(curves: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, bytes]:
    """ROC and precision-recall plots; `curves` holds (label, is_positive, positive_score) per curve."""
    roc, pr = Figure(figsize=(6, 5)), Figure(figsize=(6, 5))
    rax, pax = roc.add_subplot(), pr.add_subplot()
    for i, (n, truth, s) in enumerate(curves):  # the displays put "name (AUC = ...)" / "name (AP = ...)" in the legend
        skm.RocCurveDisplay.from_predictions(truth, s, name=_text(n), ax=rax, plot_chance_level=i == len(curves) - 1)
        skm.PrecisionRecallDisplay.from_predictions(truth, s, name=_text(n), ax=pax,
                                                    plot_chance_level=len(curves) == 1)
    rax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    pax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    for ax in (rax, pax):
        ax.legend(loc="lower right" if ax is rax else "lower left", fontsize="small")
    return {"roc": _png(roc, unit_square=True), "precision_recall": _png(pr, unit_square=True)}


def _classification_plots(doc: dict[str, Any], y: np.ndarray, pred: np.ndarray, scores: np.ndarray | None,
                          class_names: list[str] | None) -> dict[str, bytes]:
    k = len(class_names) if class_names else (scores.shape[1] if scores is not None else int(max(y.max(), pred.max())) + 1)
    names = [str(c) for c in class_names] if class_names else [str(i) for i in range(k)]
    cm = (doc.get("test") or {}).get("confusion_matrix") or skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    out = {"confusion_matrix": _confusion_plot(np.asarray(cm), names)}
    if scores is None or len(np.unique(y)) < 2:
        return out  # curves need scores and both positives and negatives
    curves = [(1, "positive")] if k == 2 else [(c, names[c]) for c in range(min(k, MAX_CURVE_CLASSES))]
    out.update(_curve_plots([(n, y == c, scores[:, c]) for c, n in curves if 0 < np.sum(y == c) < len(y)]))
    if k == 2:
        fig = Figure(figsize=(6, 5))
        ax = fig.add_subplot()
        CalibrationDisplay.from_predictions(y, scores[:, 1], n_bins=10, pos_label=1, name="model", ax=ax)
        ax.set(xlabel="mean predicted probability", ylabel="fraction of positives", title="Calibration")
        ax.legend(loc="upper left")
        out["calibration"] = _png(fig, unit_square=True)
    return out


def _clustering_plots(pred: np.ndarray, x: np.ndarray | None) -> dict[str, bytes]:
    ids, counts = np.unique(pred, return_counts=True)  # sorted by cluster id
    labels = ["noise" if i == -1 else str(i) for i in ids.tolist()]  # -1 is DBSCAN-style noise
    fig = Figure(figsize=(min(16.0, max(6.0, 0.4 * len(ids) + 2)), 5))
    ax = fig.add_subplot()
    ax.bar(range(len(ids)), counts)
    if len(ids) <= MAX_BARS:
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels(labels)
    ax.set(xlabel="cluster", ylabel="rows", title=f"Rows per cluster ({len(ids)} clusters)")
    out = {"cluster_sizes": _png(fig)}
    if x is None or x.ndim != 2 or x.shape[1] < 2 or len(x) != len(pred):
        return out
    keep = np.isfinite(x).all(axis=1)
    if keep.sum() < 2:
        return out
    x, pred = x[keep], pred[keep]
    xy = PCA(n_components=2, random_state=0).fit_transform(x)
    idx = _subsample(len(xy))
    xy, pred = xy[idx], pred[idx]
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    shown = np.unique(pred)
    if len(shown) <= MAX_LEGEND:
        for c in shown:
            m = pred == c
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label="noise" if c == -1 else str(c))
        ax.legend(title="cluster", fontsize="small", markerscale=2)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=pred, cmap="tab20", s=6, alpha=0.6)
        fig.colorbar(sc, ax=ax, label="cluster")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"Clusters, PCA projection ({len(xy)} rows)")
    out["clusters_pca"] = _png(fig)
    return out


def _anomaly_plots(doc: dict[str, Any], y: np.ndarray | None, pred: np.ndarray,
                   scores: np.ndarray | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    threshold = doc.get("threshold")
    y = None if y is None else y.astype(int)
    labelled = y is not None and len(y) == len(pred) and len(np.unique(y)) == 2
    if scores is not None:
        s = scores.astype(float).ravel()
        ok = np.isfinite(s)
        fig = Figure(figsize=(6, 5))
        ax = fig.add_subplot()
        if ok.any():
            bins = np.histogram_bin_edges(s[ok], bins=min(50, max(5, int(ok.sum()) // 10)))
            if labelled and len(y) == len(s):
                for v, n in ((0, "normal"), (1, "anomaly")):
                    ax.hist(s[ok & (y == v)], bins=bins, density=True, alpha=0.5, label=n)
                ax.set_ylabel("density")
            else:
                ax.hist(s[ok], bins=bins)
                ax.set_ylabel("rows")
        if threshold is not None:
            ax.axvline(float(threshold), color="k", ls="--", lw=1, label=_text(f"threshold {_fmt(threshold)}"))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize="small")
        ax.set(xlabel="anomaly score (higher = more anomalous)", title="Anomaly score distribution")
        out["score_histogram"] = _png(fig)
        if labelled and len(y) == len(s) and len(np.unique(y[ok])) == 2:
            out.update(_curve_plots([("anomaly", y[ok] == 1, s[ok])]))
    if labelled:
        out["confusion_matrix"] = _confusion_plot(skm.confusion_matrix(y, pred.astype(int), labels=[0, 1]),
                                                  ["normal", "anomaly"])
    return out


def _regression_plots(y: np.ndarray, pred: np.ndarray) -> dict[str, bytes]:
    y, pred = y.astype(float), pred.astype(float)
    idx = _subsample(len(y))  # our own subsample (without replacement), so the display's is off
    resid = y - pred
    out: dict[str, bytes] = {}
    for name, kind, ylabel, title in (("predicted_vs_actual", "actual_vs_predicted", "actual", "Actual vs predicted"),
                                      ("residuals", "residual_vs_predicted", "residual (actual - predicted)",
                                       "Residuals vs predicted")):
        fig = Figure(figsize=(6, 5))
        ax = fig.add_subplot()
        skm.PredictionErrorDisplay.from_predictions(y[idx], pred[idx], kind=kind, subsample=None, ax=ax,
                                                    scatter_kwargs={"s": 6, "alpha": 0.5})
        ax.set(xlabel="predicted", ylabel=ylabel, title=title)
        out[name] = _png(fig)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    ax.hist(resid, bins=min(50, max(5, len(resid) // 10)))
    ax.set(xlabel="residual (actual - predicted)", ylabel="rows", title="Residual distribution")
    out["residual_histogram"] = _png(fig)
    return out


def _slice_plots(slices: dict[str, Any], used: set[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for col, info in slices.items():
        metric = info.get("metric", "")
        items = sorted((info.get("values") or {}).items(), key=lambda kv: -(kv[1].get("rows") or 0))[:MAX_BARS]
        if not items:
            continue
        name = base = "slice_" + (re.sub(r"[^A-Za-z0-9_-]+", "_", str(col)) or "column")
        n = 1
        while name in used:
            n, name = n + 1, f"{base}_{n + 1}"
        used.add(name)
        vals = [v.get(metric) for _, v in items]
        fig = Figure(figsize=(max(6, 0.5 * len(items) + 2), 5))
        ax = fig.add_subplot()
        ax.bar(range(len(items)), [np.nan if v is None else v for v in vals])
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([_text(f"{k}\n(n={v.get('rows', '?')})") for k, v in items], rotation=45, ha="right")
        ax.set(ylabel=_text(metric), title=_text(f"{metric} by {col} (gap {_fmt(info.get('gap'))})"))
        out[name] = _png(fig)
    return out


# -- html -----------------------------------------------------------------------------
def _html(doc: dict[str, Any], plots: list[str]) -> str:
    """The page, from report.html.j2; its metrics table has a column per metrics set (test, train, ..., champion,
    then the baselines)."""
    sets = [(s, doc[s]) for s in ("test", "train", "validation") if isinstance(doc.get(s), dict)]
    if isinstance(doc.get("champion"), dict):
        sets.append((f"champion (v{doc['champion']['version']})" if doc["champion"].get("version") is not None
                     else "champion", doc["champion"]))
    for name, b in (doc.get("baselines") or {}).items():  # the same test rows, beside the model's test column
        if isinstance(b, dict) and isinstance(b.get("test"), dict):
            sets.append((f"{name} baseline: {b.get('model')} (test)", b["test"]))
    names = list(dict.fromkeys(k for _, m in sets for k, v in m.items()
                               if k not in _NON_SCALAR and k != "version" and not isinstance(v, (dict, list))))
    return templates("raypipe.evaluate").get_template("report.html.j2").render(
        doc=doc, plots=plots, columns=[s for s, _ in sets], metrics=[[n] + [m.get(n) for _, m in sets] for n in names])


# -- reinforcement learning -------------------------------------------------------------
def write_rl_report(store: Any, doc: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """A policy's report: the training return per iteration, and the evaluation episodes' returns of the
    policy beside its baselines and the champion (same seeds); the gate and metrics tables as for every task."""
    plots = {}
    points = [(h["iteration"], h["episode_return_mean"]) for h in history if h.get("episode_return_mean") is not None]
    if points:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set(xlabel="training iteration", ylabel="mean episode return (training)", title="Return per iteration")
        plots["training_return"] = _png(fig)
    returns = {k: v for k, v in (doc.get("returns") or {}).items() if v}
    if returns:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        names = list(returns)
        ax.boxplot([returns[n] for n in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [_text(n) for n in names])
        for i, n in enumerate(names, start=1):
            ax.scatter(np.full(len(returns[n]), i) + np.random.default_rng(i).uniform(-0.1, 0.1, len(returns[n])),
                       returns[n], s=8, alpha=0.5)
        ax.set(ylabel="episode return", title=f"Evaluation returns ({len(returns[names[0]])} seeded episodes)")
        plots["evaluation_returns"] = _png(fig)
    return _write(store, doc, plots)
