"""``features.windows`` offline: each validated row gets its device's rolling statistics, across splits.

A window must see the device's earlier readings whatever split the row-hash split put them
in (the stream scorer sees every earlier reading too), so the valid rows of every split are
read as one dataset, grouped by device and ordered in Ray Data, and written back per split
under ``windowed/__split=<name>``. Only feature readings are summarised (the spec refuses a
window of the target), so no label crosses a split. The window columns join the schema as
numbers (``"window": {"of", "stat"}`` says where they come from) and become numeric features.
"""
from __future__ import annotations

import copy
from typing import Any

from raypipe.datasets import footer_rows, read_parquet
from raypipe.errors import ArtifactError, DataValidationError
from raypipe.model.features.windows import add_windows, schema_columns
from raypipe.schema import NUMERIC_TYPES

SPLIT = "__split"
FOLDER = "windowed"


def check(windows: Any, schema: dict[str, Any]) -> None:
    """The named columns exist and are numbers; the device and order columns exist."""
    cols = schema["columns"]
    problems = [f"features.windows.{what}: column {name!r} is not in the data; use one of {sorted(cols)}"
                for what, name in (("by", windows.by), ("order", windows.order)) if name not in cols]
    for name in windows.columns:
        if name not in cols:
            problems.append(f"features.windows.columns: column {name!r} is not in the data; use one of {sorted(cols)}")
        elif cols[name]["type"] not in NUMERIC_TYPES:
            problems.append(f"features.windows.columns: column {name!r} is {cols[name]['type']}, not a number; "
                            "summarise numeric readings only")
    if problems:
        raise DataValidationError(problems)


def add_to_splits(artifact: Any, splits: dict[str, str], windows: Any,
                  schema: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Write every split's rows with their window columns. Returns the new splits and ``schema`` with the
    window columns added (the data's own schema, as the drift reference keeps it, is left as it was)."""
    check(windows, schema)

    def tagged(name: str) -> Any:
        return read_parquet(artifact, splits[name]).map_batches(lambda b, n=name: b.assign(**{SPLIT: n}),
                                                                 batch_format="pandas")

    parts = [tagged(name) for name in splits]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = add_windows(ds, by=windows.by, order=windows.order, columns=windows.columns, size=windows.size,
                     stats=windows.stats)
    ds.write_parquet(artifact.path(FOLDER), filesystem=artifact.fs, partition_cols=[SPLIT])
    out = {name: f"{FOLDER}/{SPLIT}={name}" for name in splits}
    for name, rel in splits.items():
        before, after = footer_rows(artifact, rel), footer_rows(artifact, out[name])
        if before != after:
            raise ArtifactError(f"features.windows lost rows of the {name} split: {before:,} valid, {after:,} "
                                "windowed; run again with --force validate")
        artifact.delete(rel)
    added = schema_columns(windows.columns, windows.size, windows.stats)
    out_schema = copy.deepcopy(schema)
    out_schema["columns"].update(added)
    numeric = out_schema.setdefault("features", {}).setdefault("numeric", [])
    numeric += [c for c in added if c not in numeric]
    return out, out_schema
