"""The reference: the schema and training profile of the first run, kept with the pipeline.

It lives in the pipeline's root store at ``reference/<pipeline>/schema.json`` and
``reference/<pipeline>/profile.json`` (one storage may hold several pipelines, as
the registry does). With ``validate.reference: first_run`` the first run that
validates successfully writes it; later runs use its schema instead of inferring
one (so the columns serving accepts stay the same) and compare their data with its
profile. :func:`reset_reference` removes it: the next run that validates writes a
new one.
Its :func:`digest` is part of the validate stage's fingerprint: a reset or replaced reference
re-runs validate; one the stage's own earlier run wrote (``origin.json``) is no change.
"""
from __future__ import annotations

import uuid
from typing import Any

from raypipe.store import Store
from raypipe.rowchecks import finding
from raypipe.schema import arrow_kind, tensor_shape

DIR = "reference"
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"
ORIGIN_FILE = "origin.json"  # the validate run that wrote it: its fingerprint without the reference, what it saw
RESETS = "resets"  # reference/resets/<pipeline>.json: a token per reset, so a reset is a new state
_FAMILY = {"number": "numeric", "integer": "numeric", "boolean": "numeric", "string": "string", "text": "string",
           "image": "image", "audio": "image", "datetime": "datetime"}  # audio: a waveform tensor
_RESET = "reset the reference (the next run writes a new one)"


def reference_store(root: Store, pipeline: str) -> Store:
    """Where a pipeline's reference lives: ``reference/<pipeline>`` under the root store."""
    return root.sub(DIR, pipeline)


def load_reference(root: Store, pipeline: str) -> dict[str, Any] | None:
    """``{"schema", "profile"}`` of the pipeline's stored reference, or None when there is none."""
    if not (root.exists(DIR, pipeline, SCHEMA_FILE) and root.exists(DIR, pipeline, PROFILE_FILE)):
        return None
    return {"schema": root.read_json(DIR, pipeline, SCHEMA_FILE),
            "profile": root.read_json(DIR, pipeline, PROFILE_FILE)}


def save_reference(root: Store, pipeline: str, schema: dict[str, Any], profile: dict[str, Any],
                   origin: dict[str, str] | None = None) -> str:
    """Store a reference (the profile first: the schema file completes it); return its location."""
    ref = reference_store(root, pipeline)
    ref.write_json(ORIGIN_FILE, origin or {})
    ref.write_json(PROFILE_FILE, profile)
    ref.write_json(SCHEMA_FILE, schema)
    return ref.uri


def reset_reference(root: Store, pipeline: str | None = None) -> bool:
    """Remove a pipeline's stored reference (every pipeline's without ``pipeline``); True when one existed.

    A reset is a new state (a token in ``reference/resets/``): the next run validates again and writes one.
    """
    pipelines = [pipeline] if pipeline is not None else [n for n in root.listdir(DIR) if n != RESETS]
    existed = False
    for name in pipelines:
        existed = bool(root.walk_files(DIR, name)) or existed
        root.delete(DIR, name)
        root.write_json(f"{DIR}/{RESETS}/{name}.json", {"token": uuid.uuid4().hex})
    return existed


def digest(spec: Any, root: Store, base_fingerprint: str) -> str:
    """The reference's part of the validate stage's fingerprint ("" when validation uses no reference).

    ``absent:<reset token>`` without a reference; the digest the writing run saw when
    this stage's own earlier run (same ``base_fingerprint``) wrote it; else the sha256 of
    its files.
    """
    if spec.validate_.reference != "first_run":
        return ""
    name = spec.name
    if load_reference(root, name) is None:
        token = root.read_json(DIR, RESETS, f"{name}.json")["token"] if root.exists(DIR, RESETS, f"{name}.json") else ""
        return f"absent:{token}"
    origin = root.read_json(DIR, name, ORIGIN_FILE) if root.exists(DIR, name, ORIGIN_FILE) else {}
    if origin.get("written_by") == base_fingerprint:
        return origin["saw"]
    return "sha256:" + root.sha256(DIR, name, SCHEMA_FILE) + root.sha256(DIR, name, PROFILE_FILE)


# --- schema comparison --------------------------------------------------------------------------
def _unparsed(stats: dict[str, Any], column: str) -> float:
    """The share of a column's rows whose text did not parse as its (numeric or boolean) type."""
    return stats.get("unparsed", {}).get(column, 0) / max(stats["rows"], 1)


def _type_change(name: str, col: dict[str, Any], field_type: Any, stats: dict[str, Any], max_missing: float,
                 source: str) -> dict[str, Any] | None:
    """An error when a column's data no longer has the type ``source`` gives it."""
    kind, want = arrow_kind(field_type), col["type"]
    if kind == "null":
        return None  # all missing in this data: the missing-values check speaks
    family, expected = _FAMILY.get(kind or ""), _FAMILY[want]
    fix = f"convert it back in the source, or {_RESET}" if source == "the reference schema" else \
        "convert it in the source, or correct the schema file"
    if family == expected:
        shape = tensor_shape(field_type) if family == "image" else None
        if shape and col.get("shape") and list(shape) != list(col["shape"]):
            return finding("error", "changed_type", f"column {name!r}: images are {shape} but {source} has "
                           f"{col['shape']}; resize them in the source, or {_RESET}", column=name,
                           value=shape, limit=col["shape"])
        return None
    if expected == "numeric" and family == "string":
        frac = _unparsed(stats, name)
        if frac <= max_missing:
            return None  # numbers (booleans) that arrived as text: rows whose text does not parse are quarantined
        what = "booleans" if want == "boolean" else "numbers"
        return finding("error", "changed_type", f"column {name!r} is text in the data, {frac:.1%} of it not {what}, "
                       f"but {source} says {want}; {fix}", column=name, value=str(field_type), limit=want)
    if expected == "datetime" and family == "string":
        frac = _unparsed(stats, name)
        if frac <= max_missing:
            return None  # dates as text: rows that are not dates are quarantined
        return finding("error", "changed_type", f"column {name!r} is text in the data, {frac:.1%} of it not dates, "
                       f"but {source} says {want}; {fix}", column=name, value=str(field_type), limit=want)
    return finding("error", "changed_type", f"column {name!r} is {kind or field_type} in the data but {source} "
                   f"says {want}; {fix}", column=name, value=str(kind or field_type), limit=want)


def schema_findings(schema: dict[str, Any], arrow_schema: Any, stats: dict[str, Any], max_missing: float,
                    source: str) -> list[dict[str, Any]]:
    """Changed types (errors) and extra columns (warnings) of the data against a given schema."""
    out = []
    fields = {f.name: f.type for f in arrow_schema}
    for name, col in schema["columns"].items():
        if name in fields:
            change = _type_change(name, col, fields[name], stats, max_missing, source)
            if change:
                out.append(change)
    use = _RESET + " to start using it" if source == "the reference schema" else "add it to the schema file to use it"
    for name in fields:
        if name not in schema["columns"] and not name.startswith("__"):
            out.append(finding("warning", "extra_column", f"column {name!r} is not in {source}: it is ignored "
                               f"(not a feature); {use}", column=name))
    return out


# --- profile comparison -------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _share_over(name: str, check: str, count: int, total: int, limit: float, split: str, what: str,
                fix: str) -> dict[str, Any] | None:
    """A warning when ``count`` of ``total`` values (``what``) exceed the fraction ``limit``."""
    frac = count / total
    if frac <= limit:
        return None
    return finding("warning", check, f"column {name!r}: {frac:.1%} of values {what} > {fix}", column=name,
                   value=round(frac, 6), limit=limit, split=split)


def drift_findings(profile: dict[str, Any], reference: dict[str, Any], cfg: Any, split: str) -> list[dict[str, Any]]:
    """Warnings for numeric values outside the reference range and categories it never saw."""
    out = []
    ref_cols = reference.get("columns", {})
    for name, p in profile["columns"].items():
        if not p.get("count"):
            continue
        if "out_of_range" in p and name in ref_cols:
            ref, lim = ref_cols[name], cfg.max_out_of_range_fraction
            out.append(_share_over(
                name, "out_of_range", p["out_of_range"], p["count"], lim, split,
                f"lie outside the reference range [{_fmt(ref['min'])}, {_fmt(ref['max'])}] (now [{_fmt(p['min'])}, "
                f"{_fmt(p['max'])}])", f"validate.max_out_of_range_fraction={lim:g}; check the source for a unit or "
                f"scale change, raise the limit, or {_RESET} if the new range is expected"))
        if "unseen" in p:
            lim = cfg.max_unseen_fraction
            out.append(_share_over(
                name, "unseen_values", p["unseen"], p["count"], lim, split,
                f"were never seen in the reference (e.g. {p.get('unseen_examples', [])})",
                f"validate.max_unseen_fraction={lim:g}; fix the source if they are errors, raise the limit, "
                f"or {_RESET} if they are expected"))
    return [f for f in out if f]


def apply_strict(findings: list[dict[str, Any]], strict: bool) -> list[dict[str, Any]]:
    """``validate.strict``: every warning becomes an error."""
    if strict:
        for f in findings:
            if f["severity"] == "warning":
                f["severity"] = "error"
                f["message"] += " (an error because validate.strict is true)"
    return findings
