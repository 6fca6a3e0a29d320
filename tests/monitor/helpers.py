"""A drift reference built from a generated training frame with the validate stage's own profile code
(no pipeline, no Ray): the statistical tests count windows with the monitor's block function."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa

from raypipe.monitor.drift import decide_column
from raypipe.monitor.reference import Reference, build_plan
from raypipe.monitor.window import block_counts, merge
from raypipe.schema import feature_lists, infer_schema
from raypipe.spec import DriftSection
from raypipe.validate.profile import block_profile, finish, merge_profiles

SHIFTED = {"amount", "avg_amount_30d", "merchant_category", "country", "hour", "device"}  # by the drift knob
UNSHIFTED = {"customer_age", "account_age_days", "transactions_last_24h"}


def reference_plan(train: pd.DataFrame, blocks: int = 4, target: str = "is_fraud",
                   id_columns: tuple[str, ...] = ("transaction_id",),
                   formats: dict[str, str] | None = None) -> dict[str, Any]:
    """The plan a version trained on ``train`` would give (its profile merged from ``blocks`` blocks).

    ``formats``: string columns to type as datetime with that format (what validate's date inference decides).
    """
    schema = infer_schema(pa.Schema.from_pandas(train, preserve_index=False), target=target,
                          task="classification", id_columns=list(id_columns))
    for c, fmt in (formats or {}).items():
        schema["columns"][c].update(type="datetime", format=fmt)
    schema["features"] = feature_lists(schema["columns"], target, list(id_columns))
    step = -(-len(train) // blocks)
    profile = finish(merge_profiles([block_profile(train.iloc[i:i + step], schema)
                                     for i in range(0, len(train), step)]))
    preds = {"task": "classification", "classes": ["0", "1"], "answer": {"kind": "categorical", "values": ["0", "1"],
                                                                         "counts": [1, 1], "rest": 0},
             "score": None, "calibration": None}
    ref = Reference(pipeline="t", version=1, schema=schema, profile=profile, predictions=preds,
                    sample=train.head(5000), metrics={}, features={}, model_uri="", threshold=0.5)
    return build_plan(ref)


def column_verdicts(plan: dict[str, Any], window: pd.DataFrame, cfg: DriftSection | None = None,
                    blocks: int = 1) -> dict[str, dict[str, Any]]:
    """Every column's decision for ``window``, counted in ``blocks`` blocks and merged."""
    cfg = cfg or DriftSection()
    step = -(-len(window) // blocks)
    doc = merge([block_counts(window.iloc[i:i + step], plan)[0] for i in range(0, len(window), step)])
    return {c: decide_column(c, plan["columns"][c], part, doc["valid"], cfg, doc["valid"] >= cfg.min_rows)
            for c, part in doc["columns"].items()}


def monitor_cli(capsys: Any, *args: str) -> tuple[int, dict | None, str]:
    """Run ``raypipe monitor ... --json`` in this process: (exit code, the --json summary, stderr)."""
    from raypipe.cli import main

    code = 0
    try:
        main(["monitor", *args, "--json"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None), out.err


def wait_while_serving(check: Any, timeout: float, what: str, procs: Any, tails: Any, every: float = 1.0) -> None:
    """Poll ``check()`` until it is true, failing at once (with ``tails()``, the servers' logs) when one of
    ``procs`` exits or after ``timeout`` s. A check that raises an HTTP or lookup error is still waiting;
    an AssertionError in it ends the wait."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, KeyError, ValueError, IndexError):
            pass
        assert all(p.poll() is None for p in procs), f"a server exited\n{tails()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{tails()}"
        time.sleep(every)
