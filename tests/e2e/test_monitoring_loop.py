"""The monitoring loop demo (`make loop`, examples/monitoring_loop/loop.py) as a test, on the session's Ray.

v1 serves; traffic at drift 0 with late labels is checked (no drift); traffic at drift 0.6 with a
moved fraud rule and late labels is checked (drift), and the retrain on the labelled requests is
gated against v1, promoted and swapped in while clients keep sending requests: none fails, the
last answers and /healthz name v2, and the audit log holds the chain drift → run → verdict →
promotion.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from raypipe.registry import Registry
from raypipe.store import Store
from tests.conftest import free_port

LOOP = Path(__file__).resolve().parents[2] / "examples" / "monitoring_loop" / "loop.py"


@pytest.fixture(scope="module")
def loop_module():
    spec = importlib.util.spec_from_file_location("monitoring_loop", LOOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loop_demo_detects_drift_retrains_promotes_and_swaps_under_load(ray_session, loop_module, tmp_path):
    storage = tmp_path / "store"
    summary = loop_module.main(["--storage", str(storage), "--out", str(tmp_path / "out"), "--port", str(free_port()),
                                "--calm-rows", "1500", "--drift-rows", "3000", "--keep-serving"])
    from ray import serve

    serve.delete("fraud-loop")
    assert summary["calm"]["status"] == "ok" and summary["calm"]["labels"] == 1500
    assert summary["shifted"]["status"] == "drift" and "amount" in summary["shifted"]["drifted"]
    rt = summary["retrain"]
    assert rt["status"] == "promoted", rt
    v1, v2 = summary["v1"], rt["version"]
    assert v2 > v1 and rt["parent"] == v1 and rt["trigger"].startswith("drift on ")
    assert summary["load"]["requests"] > 0 and summary["load"]["failed"] == 0
    assert summary["load"]["last_versions"] == [v2] and summary["serving"] == v2
    # the chain in the record: the retrain's trigger and run, the gate's verdict, the promotion
    reg = Registry(str(storage), "fraud-loop")
    retrains = [e for e in reg.audit_log() if e.get("action") == "retrain"]
    assert len(retrains) == 1 and retrains[0]["verdict"] == "promoted" and retrains[0]["candidate"] == v2
    manifest = Store(str(storage)).read_json("runs", retrains[0]["run_id"], "manifest.json")
    assert manifest["status"] == "ok" and manifest["trigger"]["reason"] == retrains[0]["reason"]
    assert manifest["trigger"]["fresh_rows"] == 4500  # every labelled request of the window, no more
    assert any(e.get("action") == "promote" and e.get("version") == v2 for e in reg.audit_log())
    assert (tmp_path / "out" / "window-shifted" / "v1" / "drift.html").exists()
