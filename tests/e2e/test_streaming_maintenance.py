"""examples/streaming_maintenance run whole at a reduced size: a real Mosquitto, the ingest actor, training
on the landed window with per-machine windows, and live scoring of new machines published back over MQTT."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _plant():
    spec = importlib.util.spec_from_file_location("plant", ROOT / "examples" / "streaming_maintenance" / "plant.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_history_lands_exactly_trains_and_live_readings_get_one_warning_check_each_in_order(ray_session, tmp_path):
    summary = _plant().main(["--out", str(tmp_path / "out"), "--history-machines", "12", "--live-machines", "4"])
    history, live = summary["history"], summary["live"]
    assert history["landed"] == history["published"] and history["quarantined"] == history["duplicates"] == 0
    assert live["predictions"] == live["distinct"] == live["readings"] and live["quarantined"] == 0
    assert live["in_order"]
    assert summary["train"]["version"] == 1
    # the held-back labels of machines the model never saw: the streamed scores rank failing readings first
    assert live["warnings"] > 0 and live["roc_auc"] > 0.8
