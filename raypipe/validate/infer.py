"""The types of text columns, decided by majority over the whole training split.

A csv source arrives as text (``raypipe.ingest.files`` reads every column as strings, so a
stray value can neither make a column text in one file and numeric in the next nor stop the
read), and so do json columns whose values mix numbers and text. When the schema is inferred,
one Ray Data pass over the training split counts, per text column, its present values and
how many of them each rule parses; the driver then types each column by the first rule that
parses at least its minimum fraction (``validate.infer``):

* ``number`` (``integer`` when every value it parsed is an integer literal):
  ``numeric_min_fraction`` (0.95);
* ``boolean`` (true/false, yes/no, t/f, y/n, 1/0, any case): ``boolean_min_fraction`` (0.95);
  a target only with true/false and 1/0: its yes/no labels stay the classes the user wrote.

A column no rule reaches stays ``string``. The values of a typed column that do not parse
are quarantined by the check pass (``x: not a number: 'n/a?'``), which parses with the same
grammar (``raypipe.columns``), so the same values fail in every block. An id column is typed
only when every value parses: ids are never a reason to quarantine a row. Another type (dates)
is one more :class:`Rule`: its schema type, the ``validate.infer`` setting of its minimum
fraction, and its matcher.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import TRUE_FALSE_WORDS, boolean_matches, integer_matches, number_matches, present, text_array
from raypipe.schema import arrow_kind
from raypipe.rowchecks import finding

MAX_EXAMPLES = 3
_SCAN = 256  # rows looked at per block for distinct examples of values that do not parse
WARN_FRACTION = 0.5  # a column that stays text although this share of it parses: a warning


@dataclass(frozen=True)
class Rule:
    """How text becomes one type.

    Attributes:
        type: the schema type a column gets.
        setting: the field of ``validate.infer`` holding the minimum fraction of present values to parse.
        matches: per value of a trimmed text array (``columns.text_array``): it parses.
        narrow: a narrower type and its matcher, used when every parsed value also matches it.
        target_matches: a stricter matcher for the target column (None: ``matches``).
    """

    type: str
    setting: str
    matches: Callable[[Any], np.ndarray]
    narrow: tuple[str, Callable[[Any], np.ndarray]] | None = None
    target_matches: Callable[[Any], np.ndarray] | None = None
    what: str = ""  # "numbers": how the message names the values


RULES: tuple[Rule, ...] = (
    Rule("number", "numeric_min_fraction", number_matches, narrow=("integer", integer_matches), what="numbers"),
    Rule("boolean", "boolean_min_fraction", boolean_matches,
         target_matches=lambda text: boolean_matches(text, TRUE_FALSE_WORDS), what="booleans"),
)


def text_columns(arrow_schema: Any, *, target: str | None, id_columns: list[str],
                 free_text: list[str]) -> dict[str, str]:
    """The columns to type, with their role (``target``, ``id`` or ``feature``): every string
    column but free-text ones and raypipe's internal ``__`` columns."""
    roles = {}
    for field in arrow_schema:
        if field.name.startswith("__") or field.name in free_text or arrow_kind(field.type) != "string":
            continue
        roles[field.name] = "target" if field.name == target else "id" if field.name in id_columns else "feature"
    return roles


# --- one block ------------------------------------------------------------------------------------
def _examples(original: Any, failed: np.ndarray) -> list[str]:
    """The first few distinct values that did not parse, as they were written."""
    idx = np.flatnonzero(failed)[:_SCAN]
    out: list[str] = []
    for v in original.take(idx).to_pylist() if len(idx) else []:
        if v not in out:
            out.append(str(v))
        if len(out) == MAX_EXAMPLES:
            break
    return out


def count_block(table: Any, roles: dict[str, str]) -> pd.DataFrame:
    """Ray Data batch function (``pyarrow``, a block per batch): per column, the present values and,
    per rule, how many parse (and examples of those that do not). One row of JSON."""
    out: dict[str, Any] = {}
    for name, role in roles.items():
        if name not in table.column_names:
            continue
        original = table[name].combine_chunks() if hasattr(table[name], "combine_chunks") else table[name]
        text = text_array(original)
        here = present(text)
        doc: dict[str, Any] = {"present": int(here.sum()), "rules": {}}
        for rule in RULES:
            match = rule.target_matches if role == "target" and rule.target_matches else rule.matches
            ok = match(text) & here
            r = {"parsed": int(ok.sum()), "examples": _examples(original, here & ~ok)}
            if rule.narrow:
                r["narrow"] = int((rule.narrow[1](text) & ok).sum())
            doc["rules"][rule.type] = r
        out[name] = doc
    return pd.DataFrame({"counts": [json.dumps(out)]})


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the blocks' counts; keep the first few distinct examples."""
    total: dict[str, Any] = {}
    for part in parts:
        for name, doc in part.items():
            mine = total.setdefault(name, {"present": 0, "rules": {}})
            mine["present"] += doc["present"]
            for rule, r in doc["rules"].items():
                m = mine["rules"].setdefault(rule, {"parsed": 0, "examples": []})
                m["parsed"] += r["parsed"]
                if "narrow" in r:
                    m["narrow"] = m.get("narrow", 0) + r["narrow"]
                m["examples"] += [e for e in r["examples"] if e not in m["examples"]][: MAX_EXAMPLES - len(m["examples"])]
    return total


# --- the decision ------------------------------------------------------------------------------------
def decide(counts: dict[str, Any], roles: dict[str, str], cfg: Any) -> dict[str, dict[str, Any]]:
    """Per text column: its type and what the data report shows of it.

    ``{"type", "values" (present), "unparsed" (values of that type that did not parse, to be
    quarantined), "examples" (of those), "rules" (per rule, the share of values it parsed and
    examples of the others)}``.
    """
    out = {}
    for name, c in counts.items():
        n = c["present"]
        rules = {rule.type: {"fraction": round(c["rules"][rule.type]["parsed"] / n, 6) if n else 0.0,
                             "examples": c["rules"][rule.type]["examples"]} for rule in RULES}
        doc: dict[str, Any] = {"type": "string", "role": roles.get(name, "feature"), "values": n, "unparsed": 0,
                               "examples": [], "rules": rules}
        for rule in RULES if n else ():
            r = c["rules"][rule.type]
            need = 1.0 if roles.get(name) == "id" else float(getattr(cfg, rule.setting))
            if r["parsed"] / n >= need:
                narrow = rule.narrow and r.get("narrow") == r["parsed"]
                doc.update(type=rule.narrow[0] if narrow else rule.type, unparsed=n - r["parsed"],
                           examples=r["examples"] if n > r["parsed"] else [])
                break
        out[name] = doc
    return out


def infer_text_types(store: Any, rel: str, roles: dict[str, str], cfg: Any, small: bool) -> dict[str, dict[str, Any]]:
    """The type of each column in ``roles``, by majority over the training split (its parquet folder ``rel``).

    ``small`` (under ``datasets.SMALL_DATA_BYTES``): one Ray task (or the driver) counts every block
    (file, :func:`count_blocks`); otherwise a plain Ray task per file does (``datasets.run_tasks``).
    """
    if not roles:
        return {}
    if small:
        from raypipe.datasets import run_small

        return decide(merge_counts(run_small(count_blocks, store, rel, roles)), roles, cfg)
    from raypipe.datasets import parquet_files, run_tasks

    counts = run_tasks("PerFile", count_file, [(store, path, roles) for path in parquet_files(store, rel)])
    return decide(merge_counts(counts), roles, cfg)


def count_blocks(store: Any, rel: str, roles: dict[str, str]) -> list[dict[str, Any]]:
    """The small-data path, inside one Ray task: :func:`count_file` of each block (file) of the split."""
    from raypipe.datasets import parquet_files

    return [count_file(store, path, roles) for path in parquet_files(store, rel)]


def count_file(store: Any, path: str, roles: dict[str, str]) -> dict[str, Any]:
    """``count_block`` of one file of the split (a block)."""
    from raypipe.datasets import read_file

    return json.loads(count_block(read_file(store, path, list(roles)), roles)["counts"].iloc[0])


def findings(docs: dict[str, dict[str, Any]], cfg: Any) -> list[dict[str, Any]]:
    """Warnings for columns that stay text although most of their values parse as a type:
    a few more bad values than the limit allows, or a column worth a look."""
    out = []
    for name, doc in docs.items():
        if doc["type"] != "string" or doc["role"] == "id":
            continue
        for rule in RULES:
            r, need = doc["rules"][rule.type], float(getattr(cfg, rule.setting))
            if WARN_FRACTION <= r["fraction"] < need:
                out.append(finding(
                    "warning", "mostly_typed", f"column {name!r} stays text (categorical): {r['fraction']:.1%} of its "
                    f"values are {rule.what}, under validate.infer.{rule.setting}={need:g} (others: {r['examples']}); "
                    "fix those values in the source, or lower the limit to type the column and quarantine them",
                    column=name, value=r["fraction"], limit=need, split="train"))
                break
    return out
