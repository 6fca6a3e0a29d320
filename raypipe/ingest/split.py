"""Deterministic stratified train/validation/test split.

Each row gets a uniform number from a hash of its content and the split seed, so
the assignment does not depend on block layout or parallelism, and duplicate rows
always land in the same split (no leakage across splits). Per class, the rows with
the smallest numbers go to test, the next to validation: exact proportions per class.
With ``group_by`` (``data.split.group_by``), a row's number is the hash of its group's
value alone, so every row of a group (a speaker, a patient) lands in the same split, and
the bounds are cut between groups: the test split holds whole groups the model never saw
(at least one group each for test and a requested validation), in proportions counted in
groups, not rows; there is no stratification then.
Only the label and that number travel to the driver. The ingest stage writes each
block's rows straight to its split's folder (``write_block_splits``).

Each block also tells the driver its columns' types: a column that is a number in one
file and text in another (json) is written as text everywhere, so the split files share
one schema (parquet readers refuse ``double vs string``) and validate types it by majority.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raypipe.datasets import as_batch, task_file_name, write_table
from raypipe.columns import row_uniform
from raypipe.schema import label_strings
from raypipe.stage import SPLITS

U_COL, SPLIT_COL = "__u", "__split"


def strata_codes(values: pd.Series | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row an index into the returned stratum names: the label as text, ``__null__`` if missing.

    Only the distinct labels are turned into text (formatting every row's label was
    most of the split's cost on millions of rows).
    """
    if values is None:
        return np.zeros(n, dtype=np.intp), np.array(["0"], dtype=object)
    if values.dtype == object:  # raw objects are not factorised: 1 and 1.0 would merge by order
        values = label_strings(values)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    names = label_strings(pd.Series(uniques)).fillna("__null__").astype(str).to_numpy(dtype=object)
    return codes, np.append(names, "__null__")  # code -1 (missing) picks the last


def split_names(codes: np.ndarray, names: np.ndarray, u: np.ndarray,
                bounds: dict[str, tuple[float, float]]) -> np.ndarray:
    """Each row's split from its stratum (``strata_codes``) and its number."""
    nan = (np.nan, np.nan)  # a stratum without bounds: train
    lo = np.array([bounds.get(str(n), nan)[0] for n in names], dtype=np.float64)[codes]
    hi = np.array([bounds.get(str(n), nan)[1] for n in names], dtype=np.float64)[codes]
    return np.where(u < lo, "test", np.where(u < hi, "validation", "train"))


def type_family(t: Any) -> str:
    """What a block's column type means for the split files' one schema: ``null`` (fits any),
    ``number`` (ints and floats: parquet readers promote), ``boolean``, ``string`` or the type itself."""
    import pyarrow as pa

    if pa.types.is_null(t):
        return "null"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    return str(t)


def _strata_u(table: Any, key: str | None) -> pd.DataFrame:
    """One row per stratum of a block, holding the u values of its rows (not one row per row),
    and the block's column types (``type_family``, as JSON)."""
    codes, names = strata_codes(table[key].to_pandas() if key else None, table.num_rows)
    distinct, of_name = np.unique(names.astype(str), return_inverse=True)
    rows = of_name[codes]
    u = table[U_COL].to_numpy()
    types = json.dumps({f.name: type_family(f.type) for f in table.schema if f.name != U_COL})
    return pd.DataFrame({"s": distinct, "u": [u[rows == i] for i in range(len(distinct))], "types": types})


def type_families(block_types: list[dict[str, str]]) -> dict[str, set[str]]:
    """Per column, the type families (``type_family``) its blocks have."""
    seen: dict[str, set[str]] = {}
    for types in block_types:
        for name, family in types.items():
            seen.setdefault(name, set()).add(family)
    return seen


def mixed_columns(block_types: list[dict[str, str]]) -> list[str]:
    """Columns whose blocks disagree on the type (nulls aside): written as text."""
    return sorted(name for name, families in type_families(block_types).items() if len(families - {"null"}) > 1)


def as_text(col: Any) -> Any:
    """A column as strings: numbers as their digits, booleans true/false, nested values as JSON."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], type=pa.string())


def _add_u(table: Any, seed: int, group_by: str | None = None) -> Any:
    """Arrow in, arrow out: the rows are only viewed through pandas to hash them (only the
    ``group_by`` column, when given: the whole group gets one number)."""
    import pyarrow as pa

    if group_by is not None and group_by not in table.column_names:
        from raypipe.errors import SpecError

        raise SpecError(f"data.split.group_by: column {group_by!r} not found; columns are {sorted(table.column_names)}")
    rows = table.select([group_by]) if group_by is not None else table
    u = row_uniform(as_batch(rows, "pandas"), seed)
    return table.append_column(U_COL, pa.array(u, type=pa.float64()))


@dataclass(frozen=True)
class PerFile:
    """Files read one per Ray task, ``read(path)`` giving a file's block (``ingest.files.FileReader``)."""

    read: Callable[[str], Any]
    files: list[str]


@dataclass
class SplitPlan:
    """The input with each row's number in ``__u`` (materialised), and what decides each row's split."""

    # the blocks as pyarrow Tables (read in the driver), their refs (a task per file: ``PerFile``), or a
    # materialised Ray Dataset
    rows_u: Any
    bounds: dict[str, tuple[float, float]]
    key: str | None  # the stratification column, if any
    rows: dict[str, int]  # exact rows per split
    as_text: list[str] = field(default_factory=list)  # columns of mixed types across blocks: written as text
    families: dict[str, set[str]] = field(default_factory=dict)  # per column, its blocks' type families

    def block_refs(self) -> list[Any] | None:
        """The blocks' object refs; None when they are tables in this process."""
        import pyarrow as pa

        if isinstance(self.rows_u, list):
            return None if all(isinstance(t, pa.Table) for t in self.rows_u) else self.rows_u
        return self.rows_u.to_arrow_refs()


def plan_splits(ds: Any, *, target: str | None, stratify: bool, test: float, validation: float,
                seed: int, group_by: str | None = None) -> SplitPlan:
    """Read the input once into Ray's object store with each row's number; decide the bounds.

    Only the numbers, grouped by class, reach the driver (8 bytes a row), which
    computes the per-class bounds and counts every split exactly. The read is the one
    Ray Data execution of the stage; the per-block passes after it (``_strata_u`` here,
    ``write_block_splits`` in the stage) are plain Ray tasks on the materialised blocks.

    ``ds`` may instead be a list of ``pyarrow.Table`` s, the blocks read in this process
    (``ray.small_data``: small data in the driver): the same functions run on them here, and
    ``rows_u`` is that list. Or :class:`PerFile`: each file is read, numbered and summed up in
    a plain Ray task of its own (no Ray Data execution), and ``rows_u`` is the blocks' refs.
    """
    from raypipe.datasets import run_per_block, run_tasks_keeping

    key = target if (stratify and target and group_by is None) else None
    if isinstance(ds, list):
        with_u: Any = [_add_u(t, seed, group_by) for t in ds]
        frames = [_strata_u(t, key) for t in with_u]
    elif isinstance(ds, PerFile):
        pairs = run_tasks_keeping("ReadFile", _read_with_u, [(ds.read, f, seed, group_by, key) for f in ds.files])
        with_u, frames = [block for block, _ in pairs], [frame for _, frame in pairs]
    else:
        with_u = ds.map_batches(_add_u, fn_kwargs={"seed": seed, "group_by": group_by}, batch_format="pyarrow",
                                batch_size=None).materialize()
        frames = run_per_block(_strata_u, with_u.to_arrow_refs(), key=key)
    parts = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    block_types = [json.loads(t) for t in parts.get("types", pd.Series(dtype=object)).unique()]
    by_stratum: dict[str, list[np.ndarray]] = {}
    for s, u in zip(parts.get("s", ()), parts.get("u", ())):  # no rows: no columns either
        by_stratum.setdefault(str(s), []).append(np.asarray(u, dtype=np.float64))
    strata_u = {s: np.sort(np.concatenate(us)) for s, us in by_stratum.items()}
    if group_by is not None:
        check_groups(group_by, np.unique(np.concatenate(list(strata_u.values()))) if strata_u else np.zeros(0), validation)
    cut = _group_bounds if group_by is not None else _bounds
    bounds = {s: cut(us, test, validation) for s, us in strata_u.items()}
    rows = {"train": 0, "validation": 0, "test": 0}
    for s, us in strata_u.items():
        lo, hi = np.searchsorted(us, bounds[s][0]), np.searchsorted(us, bounds[s][1])
        rows["test"] += int(lo)
        rows["validation"] += int(hi - lo)
        rows["train"] += int(len(us) - hi)
    return SplitPlan(with_u, bounds, key, rows, mixed_columns(block_types), type_families(block_types))


def _read_with_u(read: Callable[[str], Any], path: str, seed: int, group_by: str | None,
                 key: str | None) -> tuple[Any, pd.DataFrame]:
    """A :class:`PerFile` task: the file's block with each row's number, and its strata (``_strata_u``)."""
    table = _add_u(read(path), seed, group_by)
    return table, _strata_u(table, key)


def write_block_splits(table: Any, *, bounds: dict[str, tuple[float, float]], key: str | None, fs: Any,
                       root: str, text_columns: list[str] | None = None) -> Any:
    """Ray Data batch function: write a block's rows to ``<root>/__split=<name>/``; return its counts.

    The block stays in arrow: only the key column is viewed through pandas. ``text_columns``:
    columns written as strings (``SplitPlan.as_text``).
    """
    import pyarrow as pa

    codes, strata = strata_codes(table[key].to_pandas() if key else None, table.num_rows)
    u = table[U_COL].to_numpy()
    names = split_names(codes, strata, u, bounds)
    rows = table.drop_columns([U_COL])
    for name in text_columns or []:
        i = rows.schema.get_field_index(name)
        if i >= 0 and type_family(rows.schema.field(i).type) != "string":
            rows = rows.set_column(i, name, as_text(rows.column(i)))
    counts = []
    for name in SPLITS:
        mask = names == name
        counts.append(int(mask.sum()))
        if counts[-1]:
            file = task_file_name(u[mask].tobytes())  # named by the rows' numbers: the same order in every run
            write_table(rows.filter(pa.array(mask)), fs, f"{root}/{SPLIT_COL}={name}/{file}")
    return pa.table({"split": list(SPLITS), "rows": counts})


def _bounds(us: np.ndarray, test: float, validation: float) -> tuple[float, float]:
    """u below the first bound -> test, below the second -> validation (``us`` sorted)."""
    k_test, k_val = int(round(len(us) * test)), int(round(len(us) * (test + validation)))
    bound = lambda k: float(us[k]) if k < len(us) else 1.0  # noqa: E731
    return bound(k_test), bound(k_val)


def _group_bounds(us: np.ndarray, test: float, validation: float) -> tuple[float, float]:
    """Bounds between groups (rows of a group share one u): ``test`` and ``validation`` of the
    distinct groups, at least one each (validation only when asked for), rounded."""
    groups = np.unique(us)
    k_test = max(1, int(round(len(groups) * test)))
    k_val = k_test + (max(1, int(round(len(groups) * validation))) if validation > 0 else 0)
    bound = lambda k: float(groups[k]) if k < len(groups) else 1.0  # noqa: E731
    return bound(k_test), bound(k_val)


def check_groups(group_by: str, groups: np.ndarray, validation: float) -> None:
    """Raise when ``groups`` (one number per distinct value of ``group_by``) cannot fill train, test
    and (when asked for) validation with at least one group each."""
    need = 3 if validation > 0 else 2
    if len(groups) < need:
        from raypipe.errors import DataValidationError

        raise DataValidationError([f"data.split.group_by: column {group_by!r} has {len(groups)} distinct value(s); a "
                                   f"split by group needs at least {need} (one each for train, test"
                                   + (", validation" if validation > 0 else "") + "); add data from more groups, "
                                   "set data.split.validation: 0, or remove group_by"])
