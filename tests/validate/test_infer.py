"""Types of text columns by majority (``raypipe.validate.infer``), the grammar they are parsed with
(``raypipe.columns``), and the checks that quarantine the values that do not parse (no Ray)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.columns import parse_booleans, parse_numbers
from raypipe.spec import InferSection
from raypipe.rowchecks import REASON, annotate
from raypipe.validate.checks import batch_stats, check_block, looks_like_regression, merge_stats
from raypipe.validate.infer import count_block, decide, findings, merge_counts, text_columns

CFG = InferSection()


def infer(blocks: list[dict[str, list]], roles: dict[str, str] | None = None, cfg=CFG) -> dict:
    """Count each block as the Ray pass does, merge, decide."""
    roles = roles or {c: "feature" for c in blocks[0]}
    parts = [json.loads(count_block(pa.table({c: pa.array(v, pa.string()) for c, v in b.items()}), roles)["counts"][0])
             for b in blocks]
    return decide(merge_counts(parts), roles, cfg)


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"{i / 8:.3f}" for i in range(start, start + n)]


# --- the grammar --------------------------------------------------------------------------------------
def test_numbers_parse_by_one_grammar_whatever_the_dtype() -> None:
    text = ["1", " 2.5 ", "-3e2", ".5", "+7", "1e999", "inf", "n/a?", "1e999x", "1,5", "0x10", "1_000", "１２", None]
    p = parse_numbers(pd.Series(text, dtype=object))
    assert p.values[:5].tolist() == [1.0, 2.5, -300.0, 0.5, 7.0]
    assert np.isinf(p.values[5]) and np.isinf(p.values[6])  # numbers; quarantined later as infinite values
    assert p.failed.tolist() == [False] * 7 + [True] * 6 + [False]  # None is missing, not a failure
    arrow = parse_numbers(pa.chunked_array([text]))
    assert arrow.failed.tolist() == p.failed.tolist()
    mixed = parse_numbers(pd.Series([1.5, "x", 2], dtype=object))  # objects that are not all text
    assert mixed.values[[0, 2]].tolist() == [1.5, 2.0] and mixed.failed.tolist() == [False, True, False]
    typed = parse_numbers(pd.Series([1.0, np.nan]))
    assert not typed.failed.any()


def test_booleans_parse_conventional_tokens() -> None:
    p = parse_booleans(pd.Series(["true", "FALSE", " Yes", "no", "t", "F", "y", "N", "1", "0", "maybe", None], dtype=object))
    assert p.values[:10].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert p.failed.tolist() == [False] * 10 + [True, False]
    assert parse_booleans(pd.Series([0, 1, 2])).failed.tolist() == [False, False, True]


# --- by majority ----------------------------------------------------------------------------------------
def test_a_few_bad_values_do_not_make_a_numeric_column_text() -> None:
    values = numbers(576)
    for i, bad in zip((3, 100, 200, 300), ("n/a?", "1e999x", "twelve", "3.4.5")):
        values[i] = bad
    doc = infer([{"x": values}])["x"]
    assert doc["type"] == "number" and doc["values"] == 576 and doc["unparsed"] == 4
    assert doc["examples"] == ["n/a?", "1e999x", "twelve"]  # the first few, as written
    assert doc["rules"]["number"]["fraction"] == pytest.approx(572 / 576, abs=1e-6)


def test_majority_is_counted_over_every_block_not_the_first() -> None:
    """A first block (file) of text must not decide: the column's type follows all of its values."""
    blocks = [{"x": ["oops", "bad", None]}] + [{"x": numbers(100, 100 * i)} for i in range(3)]
    doc = infer(blocks)["x"]
    assert doc["type"] == "number" and doc["unparsed"] == 2 and doc["values"] == 302
    assert infer([{"x": numbers(100)}, {"x": ["a"] * 100}])["x"]["type"] == "string"  # half is not a majority


def test_integers_booleans_and_text() -> None:
    docs = infer([{"n": ["1", "2", "-3", None, "40"], "f": ["1", "2.5", "3", "4", "5"], "b": ["yes", "no", "Y", "n", "0"],
                   "bits": ["0", "1", "1", "0", "1"], "c": ["red", "1", "blue", "2", "green"]}])
    assert {c: d["type"] for c, d in docs.items()} == {"n": "integer", "f": "number", "b": "boolean",
                                                       "bits": "integer", "c": "string"}
    assert docs["n"]["values"] == 4 and docs["c"]["unparsed"] == 0


def test_the_threshold_is_the_setting() -> None:
    values = numbers(90) + ["x"] * 10
    assert infer([{"x": values}])["x"]["type"] == "string"
    lower = InferSection(numeric_min_fraction=0.9)
    doc = infer([{"x": values}], cfg=lower)["x"]
    assert doc["type"] == "number" and doc["unparsed"] == 10
    warned = findings(infer([{"x": values}]), CFG)
    assert len(warned) == 1 and warned[0]["severity"] == "warning" and "90.0% of its values are numbers" in warned[0]["message"]
    assert "numeric_min_fraction=0.95" in warned[0]["message"]


def test_roles_target_keeps_yes_no_labels_ids_need_every_value() -> None:
    roles = {"label": "target", "flag": "target", "id": "id", "feat": "feature"}
    docs = infer([{"label": ["yes", "no"] * 50, "flag": ["true", "false"] * 50, "id": [str(i) for i in range(99)] + ["A-1"],
                   "feat": ["yes", "no"] * 50}], roles)
    assert docs["label"]["type"] == "string"  # the classes stay "yes" and "no"
    assert docs["flag"]["type"] == "boolean"
    assert docs["id"]["type"] == "string" and docs["id"]["unparsed"] == 0  # an id is never a reason to quarantine
    assert docs["feat"]["type"] == "boolean"


def test_text_columns_are_string_columns_but_free_text_and_internal() -> None:
    schema = pa.schema([("a", pa.string()), ("b", pa.float64()), ("t", pa.string()), ("__u", pa.string()),
                        ("y", pa.large_string()), ("i", pa.string())])
    assert text_columns(schema, target="y", id_columns=["i"], free_text=["t"]) == {"a": "feature", "y": "target", "i": "id"}


# --- the checks quarantine what did not parse ---------------------------------------------------------
SCHEMA = {"columns": {"x": {"type": "number"}, "b": {"type": "boolean"}, "y": {"type": "string"}},
          "target": {"name": "y", "type": "string", "task": "classification"}, "id_columns": []}


def test_values_that_do_not_parse_are_quarantined_with_the_value() -> None:
    df = pd.DataFrame({"x": pd.Series(["1.5", "n/a?", "2", None, "7"], dtype=object),
                       "b": pd.Series(["yes", "no", "maybe", "true", None], dtype=object),
                       "y": ["a", "b", "a", "b", "a"]})
    out = check_block(df, SCHEMA, classes=None, bounds=None)
    reasons = [None if pd.isna(r) else r for r in out.rows[REASON]]
    assert reasons == [None, "x: not a number: 'n/a?'", "b: not a boolean: 'maybe'", None, None]
    stats = out.summary["stats"]
    assert stats["reasons"] == {"x: not a number": 1, "b: not a boolean": 1}  # counted without the value
    assert stats["examples"] == {"x: not a number": ["n/a?"], "b: not a boolean": ["maybe"]}
    assert stats["unparsed"] == {"x": 1, "b": 1}
    assert out.valid["x"].dtype == np.float64 and out.valid["b"].tolist() == [True, True, pd.NA]
    assert out.rows.loc[1, "x"] == "n/a?"  # quarantined rows keep the text that came
    assert merge_stats([stats, stats])["unparsed"] == {"x": 2, "b": 2}


def test_an_empty_or_blank_target_is_missing_never_a_class() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "b": [True] * 4, "y": pd.Series(["yes", "", "  ", None], dtype=object)})
    out = annotate(df, SCHEMA)
    assert out[REASON].tolist()[1:] == ["y: target is missing"] * 3
    block = check_block(pd.DataFrame({"x": [1.0, 2.0], "b": [True, False], "y": ["yes", ""]}), SCHEMA, None, None)
    assert block.summary["stats"]["classes"] == {"yes": 1}


def test_numeric_target_as_text_gives_the_classes_of_its_numbers() -> None:
    schema = {"columns": {"y": {"type": "integer"}}, "target": {"name": "y", "type": "integer", "task": "classification"}}
    block = check_block(pd.DataFrame({"y": pd.Series(["1", "0", "1.0", "x"], dtype=object)}), schema, None, None)
    assert block.summary["stats"]["classes"] == {"1": 2, "0": 1}
    later = annotate(pd.DataFrame({"y": pd.Series(["1.0", "2"], dtype=object)}), schema, classes=["0", "1"])
    assert [None if pd.isna(r) else r for r in later[REASON]] == [None, "y: class not seen in the training split"]
    assert batch_stats(later, "y")["rows"] == 2


# --- task sanity --------------------------------------------------------------------------------------
def test_many_numeric_values_under_classification_look_like_regression() -> None:
    rng = np.random.default_rng(0)
    target = {"name": "price", "type": "number"}
    prices = {f"{v:.2f}": 1 for v in rng.uniform(1, 100, 300)}
    assert f"looks like regression: {len(prices)} distinct values" in looks_like_regression(target, prices)
    ages = {str(a): 10 for a in range(18, 91)}
    assert "looks like regression: 73 distinct values" in looks_like_regression({"name": "age", "type": "integer"}, ages)
    codes = {str(c): 50 for c in range(100)}  # 100 label-encoded classes: classification
    assert looks_like_regression({"name": "c", "type": "integer"}, codes) is None
    assert looks_like_regression({"name": "c", "type": "integer"}, {str(c): 5 for c in range(1, 101)}) is None
    assert looks_like_regression({"name": "h", "type": "number"}, {f"{v / 2:g}": 3 for v in range(2, 12)}) is None
    assert looks_like_regression({"name": "s", "type": "string"}, {f"c{i}": 1 for i in range(500)}) is None


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits"])
def test_bundled_classification_sets_do_not_look_like_regression(name) -> None:
    import sklearn.datasets

    y = getattr(sklearn.datasets, f"load_{name}")().target
    classes = pd.Series(y).astype(str).value_counts().to_dict()
    assert looks_like_regression({"name": "target", "type": "integer"}, classes) is None
