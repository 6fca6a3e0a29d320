"""The data report as one self-contained HTML page.

Inline CSS only: no JavaScript, no external URLs. Every piece of text from the data
(column names, values, messages) is HTML-escaped. Bar charts are ``div`` widths.
"""
from __future__ import annotations

import html
from typing import Any

from raypipe.report_format import fmt as _fmt

_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right;vertical-align:top}th{background:#f3f3f3}
td.l,th.l{text-align:left}.error{color:#cf222e;font-weight:bold}.warning{color:#9a6700;font-weight:bold}
.ok{color:#1a7f37;font-weight:bold}.chart{width:220px}.row{display:flex;align-items:center;font-size:11px;height:13px}
.lab{width:80px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;text-align:left}
.bar{background:#4a7fc1;height:10px}.hist{display:flex;align-items:flex-end;height:40px;width:220px}
.hist div{background:#4a7fc1;flex:1;margin-right:1px}small{color:#666}"""
MAX_BARS = 10


def _e(v: Any) -> str:
    return html.escape(_fmt(v))


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A table of already-escaped cells; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="l">{html.escape(h)}</th>' if i < left else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def top_bars(top: list[list[Any]], total: int) -> str:
    """Horizontal bars of the most frequent values."""
    rows = []
    for value, count in top[:MAX_BARS]:
        width = 140 * count / total if total else 0
        rows.append(f'<div class="row"><span class="lab" title="{_e(value)}">{_e(value)}</span>'
                    f'<span class="bar" style="width:{width:.1f}px"></span>&nbsp;{count}</div>')
    return f'<div class="chart">{"".join(rows)}</div>'


def histogram_bars(counts: list[int]) -> str:
    """Vertical bars of a histogram's counts."""
    peak = max(counts) if counts else 0
    bars = "".join(f'<div style="height:{100 * c / peak if peak else 0:.1f}%" title="{c}"></div>' for c in counts)
    return f'<div class="hist">{bars}</div>'


def _summary(p: dict[str, Any]) -> str:
    kind = p.get("kind")
    if kind == "numeric":
        q = p.get("quantiles") or {}
        return (f"min {_e(p.get('min'))} · p50 {_e(q.get('p50'))} · max {_e(p.get('max'))}<br>"
                f"mean {_e(p.get('mean'))} · std {_e(p.get('std'))} · zeros {_e(p.get('zeros'))}")
    if kind == "categorical":
        return f"{_e(p.get('distinct'))} distinct"
    if kind == "text":
        n = p.get("length") or {}
        return f"length {_e(n.get('min'))}–{_e(n.get('max'))} (mean {_e(n.get('mean'))}) · empty {_e(p.get('empty'))}"
    if kind == "image":
        return f"shape {_e(p.get('shape'))} · pixel mean {_e(p.get('pixel_mean'))} · std {_e(p.get('pixel_std'))}"
    return ""


def _chart(p: dict[str, Any]) -> str:
    if p.get("kind") == "numeric" and (p.get("histogram") or {}).get("counts"):
        h = p["histogram"]
        return histogram_bars(h["counts"]) + f"<small>{_e(h['edges'][0])} … {_e(h['edges'][-1])}</small>"
    if p.get("kind") == "categorical" and p.get("top"):
        return top_bars(p["top"], p.get("count") or 0)
    return ""


def _columns(profile: dict[str, Any]) -> str:
    rows = [[_e(name), _e(p.get("type")), _e(p.get("count")), _pct(p.get("missing_rate")), _summary(p), _chart(p)]
            for name, p in (profile.get("columns") or {}).items()]
    return _table(["column", "type", "values", "missing", "statistics", "distribution"], rows, left=2)


def _splits(report: dict[str, Any]) -> str:
    rows = [[_e(s), _e(r.get("input")), _e(r.get("valid")), _e(r.get("quarantined")), _e(r.get("duplicates")),
             _pct(r.get("duplicate_fraction"))] for s, r in (report.get("splits") or {}).items()]
    return _table(["split", "input rows", "valid", "quarantined", "duplicates", "duplicate rate"], rows)


def _reasons(report: dict[str, Any]) -> str:
    rows = [[_e(s), _e(reason), _e(n), _e(", ".join("—" if x is None else str(x) for x in r["examples"].get(reason, [])))]
            for s, r in (report.get("splits") or {}).items() for reason, n in sorted(r.get("reasons", {}).items())]
    return _table(["split", "reason", "rows", "examples"], rows, left=2) if rows else "<p>No row was quarantined.</p>"


def _findings(report: dict[str, Any]) -> str:
    found = report.get("findings") or []
    if not found:
        return '<p class="ok">No findings.</p>'
    rows = [[f'<span class="{"error" if f["severity"] == "error" else "warning"}">{_e(f["severity"])}</span>',
             _e(f.get("split")), _e(f.get("check")), _e(f.get("column")), _e(f.get("value")), _e(f.get("limit")),
             _e(f.get("message"))] for f in found]
    return _table(["severity", "split", "check", "column", "value", "limit", "message"], rows, left=4)


def render(report: dict[str, Any]) -> str:
    """The HTML page of a validate report (see raypipe.validate.stage for its fields)."""
    e = html.escape
    title = "Data report" + (f" — {report['pipeline']}" if report.get("pipeline") else "")
    status = report.get("status", "")
    ref = report.get("reference") or {}
    profile = report.get("profile") or {}
    parts = [
        f"<h1>{e(title)}</h1>",
        (f"<p>run {_e(report.get('run_id'))} · validation "
         f'<span class="{"ok" if status == "passed" else "error"}">{e(status.upper())}</span> · '
         f"schema: {_e(report.get('schema_source'))} · reference: {_e(ref.get('status'))}</p>"),
        "<h2>Splits</h2>", _splits(report),
        "<h2>Quarantined rows</h2>", _reasons(report),
        "<h2>Findings</h2>", _findings(report),
        f"<h2>Columns (train, {_e(profile.get('rows'))} valid rows)</h2>", _columns(profile),
        ("<p><small>Quantiles and histogram counts are estimated from per-block sketches; "
         "all other figures are exact.</small></p>"),
    ]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style>'
            f"</head><body>{''.join(parts)}</body></html>")
