"""A run whose every stage has small data, on a Ray that would be local, never starts Ray.

``ray.small_data: auto`` runs small stages in the driver on a one-machine Ray; before any
connection that is every Ray raypipe would start or join without an address. In the subprocess
``ray.init`` raises: raypipe's own connection and the one Ray makes by itself when an API such as
``ray.get`` or ``ray.get_runtime_context`` is called without a connection, so a stage that still
touches Ray fails the run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raypipe.spec import load_spec
from tests.conftest import small_spec

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys
import ray, raypipe
from raypipe.progress import Progress

def refused(*args, **kwargs):
    raise AssertionError("ray.init was called")

ray.init = refused  # what Ray's automatic start calls too

spec = raypipe.load_spec(json.loads(sys.argv[1]))
result = raypipe.run(spec, progress=Progress(quiet=False))
train = result.outputs["train"]
print(json.dumps({"ray": ray.is_initialized(), "status": {s["name"]: s["status"] for s in result.stages},
                  "quarantined": result.outputs["validate"].outputs.quarantined,
                  "fit": train.store.read_json(train.outputs.report), "metrics": result.metrics}))
"""


def _child(spec: dict, tmp_path: Path) -> tuple[dict, str]:
    home = tmp_path / "home"  # no `raypipe up` Ray here
    full = {**os.environ, "RAYPIPE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    full.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=full, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_a_small_scikit_learn_run_on_messy_csv_starts_no_ray(tmp_path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    n = 4000
    x = rng.normal(size=n)
    df = pd.DataFrame({"id": np.arange(n), "x": x.round(4).astype(object), "k": rng.integers(0, 5, n),
                       "when": pd.date_range("2026-01-01", periods=n, freq="h").astype(str),
                       "c": rng.choice(["é", "ü", None], n, p=[.45, .45, .1]), "y": (x + rng.normal(0, .7, n) > 0).astype(int)})
    df.loc[[7, 3000], "x"] = ["12 EUR", "1,5"]  # stray text in a number column: quarantined
    df.loc[[9], "y"] = None
    folder = tmp_path / "csv"
    folder.mkdir()
    df.iloc[:2500].to_csv(folder / "a.csv", index=False)
    df.iloc[2500:].to_csv(folder / "b.csv", index=False, encoding="utf-8-sig")
    spec = small_spec(tmp_path / "store", name="t-no-ray",
                      data={"source": {"type": "csv", "path": str(folder)}, "target": "y", "id_columns": ["id"]},
                      deploy={"enabled": False})
    got, err = _child(spec, tmp_path)
    assert got["ray"] is False, err[-3000:]
    assert set(got["status"].values()) == {"ran"} and got["quarantined"] == 3  # "12 EUR", "1,5", the missing label
    assert got["fit"]["path"] == "driver" and got["fit"]["threads"] >= 1
    assert got["metrics"]["roc_auc"] > 0.75  # x carries the label
    assert "without starting Ray" in err


def test_a_small_builtin_run_starts_no_ray(tmp_path) -> None:
    spec = small_spec(tmp_path / "store", name="t-no-ray-b", rows=2500, deploy={"enabled": False})
    got, err = _child(spec, tmp_path)
    assert got["ray"] is False and set(got["status"].values()) == {"ran"}, err[-3000:]
    assert got["fit"]["path"] == "driver" and got["metrics"]["roc_auc"] > 0.6


@pytest.mark.parametrize(("ray_section", "address", "env", "expected"), [
    ({}, None, {}, True),  # a new local Ray or `raypipe up`'s: one machine
    ({"small_data": "tasks"}, None, {}, False),
    ({}, "auto", {}, False),  # a cluster: connect, then ask it (runtime.one_machine)
    ({"address": "10.0.0.5:6379"}, None, {}, False),
    ({}, None, {"RAY_ADDRESS": "10.0.0.5:6379"}, False),  # inside `ray job submit`
    ({"small_data": "driver", "address": "10.0.0.5:6379"}, None, {}, True),  # the spec's explicit choice
])
def test_where_small_work_may_run_without_ray(monkeypatch, ray_section, address, env, expected) -> None:
    import ray

    from raypipe import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime, "_WITHOUT_RAY", [False])  # restored after the test
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = load_spec(small_spec(Path("/tmp/unused"), ray=ray_section))
    assert runtime.driver_without_ray(spec, address) is expected
    assert runtime.small_data_in_driver() is expected
