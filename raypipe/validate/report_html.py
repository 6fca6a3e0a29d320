"""The data report as one self-contained HTML page, rendered from ``report.html.j2``.

Inline CSS only: no JavaScript, no external URLs. The template is autoescaped, so every
piece of text from the data (column names, values, messages) is HTML-escaped. Bar charts
are ``div`` widths.
"""
from __future__ import annotations

from typing import Any

from raypipe.report_format import templates

MAX_BARS = 10  # the most frequent values drawn per categorical column


def render(report: dict[str, Any]) -> str:
    """The HTML page of a validate report (see raypipe.validate.stage for its fields)."""
    return templates("raypipe.validate").get_template("report.html.j2").render(report=report, max_bars=MAX_BARS)
