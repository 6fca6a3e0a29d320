"""The data report page: self-contained, escaped, and showing every column."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raypipe.rowchecks import finding
from raypipe.validate.profile import block_profile, finish, merge_profiles
from raypipe.validate.report_html import render

VOID = {"meta", "br", "img", "hr", "input", "link"}
SCHEMA = {"columns": {"<script>": {"type": "string"}, "amount": {"type": "number"}, "note": {"type": "text"},
                      "img": {"type": "image"}, "id": {"type": "integer"}}, "id_columns": ["id"]}


class Balanced(HTMLParser):
    """Checks that every opened element is closed in order; collects the text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (self.stack[-5:], tag)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def report() -> dict:
    df = pd.DataFrame({
        "<script>": ["<b>bold</b>", "a", "a", None],
        "amount": [1.0, 2.5, np.nan, 10.0],
        "note": ["hi & bye", "", "x", None],
        "img": [np.zeros((2, 2))] * 4,
        "id": [1, 2, 3, 4],
    })
    profile = finish(merge_profiles([block_profile(df, SCHEMA)]), duplicates=0)
    return {
        "pipeline": "p<1>", "run_id": "r1", "status": "failed", "schema_source": "inferred",
        "reference": {"status": "checked"},
        "splits": {"train": {"input": 5, "valid": 4, "quarantined": 1, "duplicates": 0, "duplicate_fraction": 0.0,
                             "reasons": {"<script>: value not among the schema's allowed values": 1},
                             "examples": {"<script>: value not among the schema's allowed values": ["<img src=x>"]}}},
        "findings": [finding("error", "missing_column", "column '<script>' is missing", column="<script>"),
                     finding("warning", "unseen_values", "too many new values", column="amount", value=0.3,
                             limit=0.01, split="train")],
        "profile": profile,
    }


def test_html_is_self_contained_well_formed_and_escaped() -> None:
    page = render(report())
    parser = Balanced()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert "script" not in parser.tags and "img" not in parser.tags and "b" not in parser.tags
    assert "&lt;script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page and "&lt;img src=x&gt;" in page
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert "http://" not in page and "https://" not in page and "<link" not in page
    text = "".join(parser.text)
    for column in ("<script>", "amount", "note", "img", "id"):
        assert column in text
    assert "FAILED" in text and "missing_column" in text and "unseen_values" in text
    assert 'class="hist"' in page and 'class="bar"' in page  # the inline charts


def test_html_with_nothing_to_report() -> None:
    page = render({"status": "passed", "splits": {}, "findings": [], "profile": {}})
    assert "No findings." in page and "No row was quarantined." in page
    parser = Balanced()
    parser.feed(page)
    assert parser.stack == []


def test_every_report_template_ships_with_the_package() -> None:
    """The .html.j2 templates are package data: each one matches a glob in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["raypipe"]
    found = [p.relative_to(root / "raypipe") for p in (root / "raypipe").rglob("*.html.j2")]
    assert len(found) >= 3
    assert [str(p) for p in found if not any(p.match(g) and len(p.parts) == len(Path(g).parts) for g in globs)] == []
