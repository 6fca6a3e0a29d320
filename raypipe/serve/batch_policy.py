"""``raypipe predict`` for a reinforcement-learning version: observations in, the policy's actions out.

The input holds one observation per row, as one list column ``obs`` (or ``observation``; a
plain number for a Discrete observation space) or as flat columns ``obs_0 .. obs_<n-1>`` (the
layout :func:`raypipe.envs.logged.log_transitions` writes; the observation flattened in C
order). The output keeps every input column, like the tabular batch predict, and adds
``action`` (a list column for a Box action space), ``probabilities`` (discrete actions, not
DQN), ``q_values`` (DQN, where the module gives them), ``value`` (where the module has a value
function) and ``model_version``. An input column of one of those names (a logged transition's
``action``) is kept as ``input_<name>``.

Bad observations are refused before any actor starts, as the Serve endpoint refuses them (the
tabular batch predict has no row checks that quarantine: its features impute): the driver
streams the observation columns once and raises :class:`DataValidationError` naming the column,
the row (0-based, in the input's order) and the fix, for a wrong width, a null, a NaN or
infinite value and a value outside the observation space.
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from raypipe.errors import DataValidationError, SpecError
from raypipe.store import Store

LIST_COLUMNS = ("obs", "observation")
ANSWER_COLUMNS = ("action", "probabilities", "q_values", "value", "model_version")
MAX_PROBLEMS = 10
_FLAT = re.compile(r"obs_(\d+)")


class Layout:
    """Where a table's observations are: ``kind`` ``"list"`` (one column) or ``"flat"`` (``obs_<i>``)."""

    def __init__(self, kind: str, columns: list[str], obs_shape: tuple[int, ...]) -> None:
        self.kind, self.columns, self.obs_shape = kind, columns, obs_shape
        self.size = int(np.prod(obs_shape)) if obs_shape else 1

    def cell(self, i: int) -> str:
        """The column (and position in it) of the observation's ``i``-th flattened value."""
        if self.kind == "flat":
            return self.columns[i]
        return self.columns[0] if not self.obs_shape else f"{self.columns[0]}[{i}]"

    def fix(self) -> str:
        if self.kind == "flat":
            return f"give every row finite numbers in {self.columns[0]} .. {self.columns[-1]}"
        return (f"give every row of {self.columns[0]!r} a list of {self.size} finite numbers" if self.obs_shape
                else f"give every row of {self.columns[0]!r} one finite number")


def layout(names: list[str], obs_shape: tuple[int, ...]) -> Layout:
    """The observation columns of a table with columns ``names`` (SpecError when there are none or they
    do not fit the observation space)."""
    size = int(np.prod(obs_shape)) if obs_shape else 1
    for c in LIST_COLUMNS:
        if c in names:
            return Layout("list", [c], obs_shape)
    flat = sorted((c for c in names if _FLAT.fullmatch(c)), key=lambda c: int(c[4:]))
    want = [f"obs_{i}" for i in range(size)]
    if flat:
        if flat != want:
            raise SpecError(f"--input has the observation columns {flat}, but the policy's observation space (shape "
                            f"{list(obs_shape)}) needs exactly {want[0]} .. {want[-1]} ({size} columns)")
        return Layout("flat", want, obs_shape)
    raise SpecError(f"--input has no observation columns (it has {names[:12]}): give one list column 'obs' (or "
                    f"'observation') of {size} number(s) per row, or the columns {want[0]} .. {want[-1]} (the layout "
                    "of raypipe's logged transitions)")


def observations(batch: pd.DataFrame, lay: Layout, offset: int = 0) -> tuple[np.ndarray, list[str], set[int]]:
    """``(obs [n, *obs_shape] float64, problems, malformed)``: the rows' observations (bad rows as NaN), why
    rows are malformed (wrong width, null), each naming the column and the row (``offset`` + position),
    and those rows' positions in the batch."""
    n, problems, malformed = len(batch), [], set()
    if lay.kind == "flat":
        flat = batch[lay.columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for j, c in enumerate(lay.columns):
            for i in np.flatnonzero(batch[c].isna().to_numpy())[:MAX_PROBLEMS]:
                problems.append(f"column {c!r}, row {offset + i}: no value (null); {lay.fix()}")
                malformed.add(int(i))
        return flat.reshape((n, *lay.obs_shape)), problems, malformed
    col = lay.columns[0]
    flat = np.full((n, lay.size), np.nan)
    for i, v in enumerate(batch[col].to_numpy(dtype=object)):
        if v is None or (np.ndim(v) == 0 and pd.isna(v)):
            malformed.add(i)
            problems.append(f"column {col!r}, row {offset + i}: no observation (null); {lay.fix()}")
            continue
        try:
            a = np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            malformed.add(i)
            problems.append(f"column {col!r}, row {offset + i}: {str(v)[:60]!r} is not numbers; {lay.fix()}")
            continue
        if a.size != lay.size:
            malformed.add(i)
            problems.append(f"column {col!r}, row {offset + i}: {a.size} value(s), but the observation space (shape "
                            f"{list(lay.obs_shape)}) needs {lay.size}; {lay.fix()}")
            continue
        flat[i] = a
    return flat.reshape((n, *lay.obs_shape)), problems, malformed


def problems(obs: np.ndarray, policy: Any, lay: Layout, offset: int = 0, malformed: set[int] | None = None
             ) -> list[str]:
    """Why well-formed rows' observations are not in the observation space (NaN/infinite, out of bounds)."""
    out, malformed = [], malformed or set()
    flat = obs.reshape(len(obs), -1)
    bad = ~np.isfinite(flat)
    ok = ~bad.any(axis=1)
    bad[sorted(malformed)] = False  # reported already
    for i, j in np.argwhere(bad)[:MAX_PROBLEMS]:
        out.append(f"column {lay.cell(int(j))!r}, row {offset + int(i)}: {flat[i, j]} is not a finite number; "
                   f"{lay.fix()}")
    if ok.any():
        rows = np.flatnonzero(ok)
        for p in policy.problems(obs[ok])[:MAX_PROBLEMS]:
            i, pos = rows[p["loc"][1]], p["loc"][2:]
            j = int(np.ravel_multi_index(tuple(pos), lay.obs_shape)) if pos else 0
            out.append(f"column {lay.cell(j)!r}, row {offset + int(i)}: {p['msg']}; give observations inside the "
                       "observation space (the policy's answers outside it are not defined)")
    return out


def check_input(path: str, policy: Any) -> tuple[Layout, int]:
    """Stream the observation columns of ``path`` (parquet or csv) once on the driver: ``(layout, rows)``,
    or DataValidationError with the first problems."""
    import pyarrow.dataset as pads

    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    data = pads.dataset(p, filesystem=fs, format="csv" if p.endswith(".csv") else "parquet")
    lay = layout(data.schema.names, policy.obs_shape)
    found: list[str] = []
    offset = 0
    for rb in data.to_batches(columns=lay.columns):
        batch = rb.to_pandas()
        obs, malformed, bad_rows = observations(batch, lay, offset)
        found += malformed + problems(obs, policy, lay, offset, bad_rows)
        offset += len(batch)
        if len(found) >= MAX_PROBLEMS:
            break
    if found:
        more = [f"(the first {MAX_PROBLEMS} problems; there may be more)"] if len(found) > MAX_PROBLEMS else []
        raise DataValidationError([f"--input {path!r}: {m}" for m in found[:MAX_PROBLEMS]] + more)
    return lay, offset


def answer_columns(policy: Any, obs: np.ndarray) -> dict[str, Any]:
    """The policy's answers for ``obs`` as output columns (list columns as lists of arrays)."""
    out = policy.act(obs)
    cols: dict[str, Any] = {}
    actions = out["actions"]
    cols["action"] = list(actions) if actions.ndim > 1 else actions
    for key, name in (("probabilities", "probabilities"), ("q_values", "q_values")):
        if key in out:
            cols[name] = list(out[key].astype(np.float64))
    if "values" in out:
        cols["value"] = out["values"].astype(np.float64)
    return cols


class PolicyPredict:
    """Ray Data callable class: loads the policy once per actor, answers batches of observation rows."""

    def __init__(self, model_uri: str, kind: str, columns: list[str], version: int) -> None:
        from raypipe.model.policy import load_policy

        self.policy = load_policy(Store(model_uri))
        self.layout = Layout(kind, columns, self.policy.obs_shape)
        self.version = version

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        obs, malformed, _ = observations(batch, self.layout)
        if malformed:  # the driver checked the input: this is a file that changed since
            raise DataValidationError(malformed[:MAX_PROBLEMS])
        obs = self.policy.check(obs)
        out = batch.rename(columns={c: f"input_{c}" for c in ANSWER_COLUMNS if c in batch})
        for name, values in answer_columns(self.policy, obs).items():
            out[name] = values
        out["model_version"] = self.version
        return out


def predict_policy_files(vs: Store, v: int, input: str, out_fs: Any, out_path: str, output: str, *,
                         connect: Any, read: Any, actors: int = 2) -> dict[str, Any]:
    """Write the policy's answers for every observation row of ``input`` (see the module docstring).

    ``vs``: the version's store, already checked against its manifest; ``connect``: joins Ray; ``read``:
    ``input`` as a Ray dataset (``raypipe predict``'s reader, the same for every model).
    """
    import pyarrow.dataset as pads

    from raypipe.model.policy import load_policy

    policy = load_policy(vs.sub("model"))
    t0 = time.perf_counter()
    lay, _ = check_input(input, policy)  # refused here, before Ray or any actor starts
    connect()
    preds = read(input).map_batches(
        PolicyPredict, fn_constructor_kwargs={"model_uri": vs.full_uri("model"), "kind": lay.kind,
                                              "columns": lay.columns, "version": v},
        batch_format="pandas", concurrency=actors, batch_size=4096)
    preds.write_parquet(out_path, filesystem=out_fs)
    rows = pads.dataset(out_path, filesystem=out_fs, format="parquet").count_rows()
    return {"version": v, "rows": rows, "output": output, "seconds": round(time.perf_counter() - t0, 2)}
