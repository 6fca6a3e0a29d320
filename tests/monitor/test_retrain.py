"""The closed loop on demand: `raypipe monitor --input W --retrain` on a real pipeline and a live endpoint.

v1 is trained on 600 undrifted rows of the built-in transactions; the fresh labelled data that
`monitor.retrain.data` names is 8,000 rows at `drift: 0.5`. A drifted window triggers a retrain
that is gated against v1 on the fresh test split, promoted and swapped into the running endpoint
under load; a second call inside the cooldown is skipped; an impossible `min_delta` gets the
candidate rejected and changes nothing; one retrain at a time (the lease) and a dead holder's
attempt is marked abandoned.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import raypipe
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.monitor.retrain import Lease, Ledger, Trigger, retrain, settle_canary
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.deploy import deploy, sample_request
from raypipe.store import Store
from tests.conftest import free_port, small_spec
from tests.monitor.helpers import monitor_cli
from tests.serve.helpers import ClosedLoop


def _spec_file(base: dict, folder: Path, name: str, **retrain_settings) -> Path:
    data = yaml.safe_load(yaml.safe_dump(base))
    data["monitor"]["retrain"] = {**data["monitor"]["retrain"], **retrain_settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def loop(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("retrain")
    fresh = d / "fresh"
    fresh.mkdir()
    generate_transactions(8000, seed=21, drift=0.5).to_parquet(fresh / "part-0.parquet", index=False)
    window = d / "window.csv"
    generate_transactions(3000, seed=22, drift=0.5).drop(columns=["is_fraud"]).to_csv(window, index=False)
    base = small_spec(d / "store", name="t-rtr", rows=600,
                      deploy={"port": free_port(), "route_prefix": "/rtr",
                              "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
                      monitor={"drift": {"min_rows": 500},
                               "retrain": {"on": ["drift"], "data": {"type": "parquet", "path": str(fresh)},
                                           "cooldown_s": 0, "min_rows": 1000, "vs_champion_metric": "roc_auc"}})
    first = raypipe.run(base, progress=Progress(quiet=True))
    assert first.alias == "champion"
    return base, d, window, first.version


def test_drift_retrains_gates_promotes_and_swaps_the_live_endpoint_under_load(loop, capsys):
    base, d, window, v1 = loop
    spec_path = _spec_file(base, d, "main")
    spec = raypipe.load_spec(spec_path)
    ep = deploy(spec)
    assert ep.version == v1
    rows = sample_request(spec, v1, n=8)
    with ClosedLoop(ep.url, rows, clients=2) as load:
        code, summary, err = monitor_cli(capsys, str(spec_path), "--input", str(window), "--retrain")
    assert code == 0, err[-4000:]
    rt = summary["retrain"]
    assert rt["status"] == "promoted" and rt["promoted"] and rt["parent"] == v1, rt
    v2 = rt["version"]
    assert v2 > v1 and rt["trigger"].startswith("drift on ") and rt["endpoint"] == ep.url
    assert Registry(spec.storage, spec.name).alias("champion") == v2
    # the swap: no failed request while it happened, and the endpoint answers with v2 now
    assert load.answers and not load.failures, load.failures[:5]
    assert load.answers[-1][2] == v2  # answers after the swap name the new version
    assert httpx.get(f"{ep.url}/healthz", timeout=30).json()["version"] == v2
    answer = httpx.post(f"{ep.url}/predict", json=rows[0], timeout=30).json()
    assert answer["version"] == v2
    # the chain is on record: the trigger in the run's manifest, the audit log, `raypipe runs list`
    store = Store(spec.storage)
    manifest = store.read_json("runs", rt["run_id"], "manifest.json")
    assert manifest["trigger"]["reason"] == rt["trigger"] and manifest["trigger"]["parent_champion"] == v1
    events = [e for e in Registry(spec.storage, spec.name).audit_log() if e.get("action") == "retrain"]
    assert [(e["candidate"], e["previous"], e["verdict"], e["run_id"]) for e in events] == [(v2, v1, "promoted",
                                                                                             rt["run_id"])]
    assert events[0]["reason"].startswith("drift on ")
    promotions = [e for e in Registry(spec.storage, spec.name).audit_log()
                  if e.get("action") == "promote" and e.get("version") == v2]
    assert promotions and promotions[0]["alias"] == "champion"
    from raypipe.cli import main

    try:
        main(["runs", "list", str(spec_path)])
    except SystemExit:
        pass
    assert "drift on" in capsys.readouterr().out

    # v2 was trained on drifted data: the window is no drift for it
    code, summary, err = monitor_cli(capsys, str(spec_path), "--input", str(window), "--retrain")
    assert code == 0 and summary["status"] == "ok" and "retrain" not in summary, err[-3000:]
    # inside the cooldown, a window drifted for v1 retrains nothing: exit 5, skipped, champion kept
    cooled = _spec_file(base, d, "cooled", cooldown_s=3600)
    code, summary, err = monitor_cli(capsys, str(cooled), "--input", str(window), "--version", str(v1), "--retrain")
    assert code == 5, err[-3000:]
    assert summary["retrain"]["status"] == "skipped" and summary["retrain"]["reason"].startswith("cooldown")
    assert Registry(spec.storage, spec.name).alias("champion") == v2
    from ray import serve

    serve.delete(spec.name)


def test_a_rejected_candidate_changes_nothing_and_exits_4(loop, capsys):
    base, d, window, _ = loop
    spec_path = _spec_file(base, d, "strict", min_delta=0.5)  # beat the champion's ROC-AUC by 0.5: impossible
    reg = Registry(base["storage"], base["name"])
    champion = reg.alias("champion")
    code, summary, err = monitor_cli(capsys, str(spec_path), "--input", str(window), "--version", "1", "--retrain")
    assert code == 4, err[-3000:]
    rt = summary["retrain"]
    assert rt["status"] == "rejected" and not rt["promoted"] and "roc_auc" in rt["reason"]
    assert reg.alias("champion") == champion and reg.status(rt["version"]) == "rejected"
    entries = Ledger(Store(base["storage"]).sub("monitor", base["name"], "retrain")).entries()
    assert entries[-1]["status"] == "rejected" and entries[-1]["run_id"] == rt["run_id"]


def test_drift_without_a_configured_retrain_exits_5(loop, capsys):
    base, d, window, _ = loop
    data = yaml.safe_load(yaml.safe_dump(base))
    data["monitor"]["retrain"] = {"on": ["performance"], "data": base["monitor"]["retrain"]["data"]}
    path = d / "perf-only.yaml"
    path.write_text(yaml.safe_dump(data))
    code, summary, err = monitor_cli(capsys, str(path), "--input", str(window), "--version", "1", "--retrain")
    assert code == 5, err[-3000:]
    assert summary["retrain"]["status"] == "not_configured" and summary["drifted"]


def test_one_retrain_at_a_time_and_a_dead_holders_attempt_is_abandoned(ray_session, tmp_path):
    spec = raypipe.load_spec(small_spec(tmp_path / "store", name="t-lease",
                                        monitor={"retrain": {"on": ["drift"], "include_feedback": True,
                                                             "cooldown_s": 0}}))
    store = Store(spec.storage).sub("monitor", spec.name, "retrain")
    live = Lease(store, ttl_s=3600)
    assert live.acquire("a1") == (True, None)
    out = retrain(spec, Trigger("drift", "drift on amount"))  # a live holder (this process): nothing runs
    assert out.status == "skipped" and "holds the lease" in out.reason and out.run_id is None
    live.release()

    # a holder that died mid-retrain: its lease is taken over and its attempt marked abandoned
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ledger = Ledger(store)
    ledger.start("a2", Trigger("drift", "drift on amount"), parent=1)
    store.write_json("LEASE.json", {"token": "x", "attempt": "a2", "since": 0 + os.path.getmtime(__file__),
                                    "host": os.uname().nodename, "pid": int(dead.stdout)})
    out = retrain(spec, Trigger("drift", "drift on amount"))  # no labelled requests in the log: too few rows
    assert out.status == "skipped" and "min_rows" in out.reason
    by_id = {e["id"]: e for e in ledger.entries()}
    assert by_id["a2"]["status"] == "abandoned" and not store.exists("LEASE.json")


def test_a_canary_serves_beside_the_champion_and_is_promoted_on_live_labelled_requests(ray_session, tmp_path, capsys):
    """promote: canary — the passing candidate first answers half of the requests as challenger; once its
    window has passed, the next `monitor --retrain` compares both versions' live F1 on the requests that
    got labels (through /feedback), and promotes the canary, redeploying without one."""
    fresh = tmp_path / "fresh.parquet"
    generate_transactions(6000, seed=41, drift=0.5, concept=1.0).to_parquet(fresh, index=False)
    window = tmp_path / "window.csv"
    generate_transactions(1500, seed=42, drift=0.5).drop(columns=["is_fraud"]).to_csv(window, index=False)
    base = small_spec(tmp_path / "store", name="t-canary", rows=800,
                      deploy={"port": free_port(), "route_prefix": "/canary", "canary": {"percent": 50},
                              "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
                      monitor={"log": {"flush_rows": 1000, "flush_seconds": 0.5}, "drift": {"min_rows": 500},
                               "retrain": {"on": ["drift"], "data": {"type": "parquet", "path": str(fresh)},
                                           "min_rows": 1000, "promote": "canary", "canary_window_s": 1,
                                           "canary_min_labels": 100}})
    v1 = raypipe.run(base, progress=Progress(quiet=True)).version
    no_canary = {**base, "deploy": {**base["deploy"], "canary": None}}  # v1 alone: no challenger yet
    spec_path = tmp_path / "canary.yaml"
    spec_path.write_text(yaml.safe_dump(base))
    ep = deploy(raypipe.load_spec(no_canary))
    code, summary, err = monitor_cli(capsys, str(spec_path), "--input", str(window), "--retrain")
    assert code == 0, err[-3000:]
    rt = summary["retrain"]
    assert rt["status"] == "canary" and not rt["promoted"], rt
    v2 = rt["version"]
    reg = Registry(base["storage"], "t-canary")
    assert reg.alias("champion") == v1 and reg.alias("challenger") == v2
    meta = httpx.get(f"{ep.url}/metadata", timeout=30).json()
    assert meta["challenger"] == {"version": v2, "canary_percent": 50.0, "shadow": False}

    # live traffic from the moved world, its labels late: both versions answer about half
    traffic = generate_transactions(1600, seed=43, drift=0.5, concept=1.0)
    labels = traffic.pop("is_fraud").tolist()
    rows = json.loads(traffic.to_json(orient="records"))
    answered = {}
    traffic_started = time.time()
    with httpx.Client(timeout=60) as http:
        for k, row in enumerate(rows):
            r = http.post(f"{ep.url}/predict", json=row, headers={"X-Request-ID": f"c-{k}"})
            answered[r.json()["version"]] = answered.get(r.json()["version"], 0) + 1
        time.sleep(1.5)  # the replica writes its log rows (flush_seconds 0.5)
        body = [{"request_id": f"c-{k}", "label": int(y)} for k, y in enumerate(labels)]
        assert http.post(f"{ep.url}/feedback", json=body).json()["stored"] == len(body)
    assert min(answered.get(v1, 0), answered.get(v2, 0)) > 500, answered

    code, summary, err = monitor_cli(capsys, str(spec_path), "--input", str(window), "--version", str(v1),
                                     "--retrain")
    assert code == 0, err[-3000:]
    rt = summary["retrain"]
    assert rt["status"] == "promoted" and rt["version"] == v2 and "live labelled requests" in rt["reason"], rt
    assert reg.alias("champion") == v2
    meta = httpx.get(f"{ep.url}/metadata", timeout=30).json()
    assert "challenger" not in meta and httpx.get(f"{ep.url}/healthz", timeout=30).json()["version"] == v2
    judged = [e for e in reg.audit_log() if e.get("action") == "canary"]
    assert [(e["verdict"], e["candidate"]) for e in judged] == [("promoted", v2)]
    assert judged[0]["live"][str(v2)] >= judged[0]["live"][str(v1)]

    # the other way round on the same live requests: had v1 been the canary beside champion v2, it
    # would have lost and been rolled back, the champion and its endpoint left as they are
    ledger = Ledger(Store(base["storage"]).sub("monitor", "t-canary", "retrain"))
    ledger.write({"id": "z-reverse", "status": "canary", "version": v1, "parent": v2, "reason": "test: reversed",
                  "canary_started": traffic_started, "started": traffic_started})
    out = settle_canary(raypipe.load_spec(spec_path))
    assert out.status == "rolled_back" and not out.promoted and f"canary version {v1}" in out.reason, out
    assert reg.alias("champion") == v2 and httpx.get(f"{ep.url}/healthz", timeout=30).json()["version"] == v2
    assert {e["id"]: e["status"] for e in ledger.entries()}["z-reverse"] == "rolled_back"
    assert [e["verdict"] for e in reg.audit_log() if e.get("action") == "canary"] == ["promoted", "rolled_back"]
    from ray import serve

    serve.delete("t-canary")


def test_cooldown_and_daily_cap_count_attempts_that_ran_and_a_watched_canary_blocks(tmp_path):
    from raypipe.monitor.retrain import _gates

    spec = raypipe.load_spec(small_spec(tmp_path / "store", name="t-gates",
                                        monitor={"retrain": {"on": ["drift"], "include_feedback": True,
                                                             "cooldown_s": 600, "max_runs_per_day": 2}}))
    ledger = Ledger(Store(spec.storage).sub("monitor", spec.name, "retrain"))
    now = 1_800_000_000.0
    assert _gates(spec, ledger, now) is None
    for k, (ago, status) in enumerate([(7200, "failed"), (3600, "rejected"), (60, "skipped")]):
        ledger.write({"id": f"a{k}", "started": now - ago, "status": status})
    assert _gates(spec, ledger, now).startswith("daily cap: 2 retrains")  # a skipped attempt never ran: not counted
    ledger.write({"id": "a3", "started": now - 300, "status": "failed"})
    assert _gates(spec, ledger, now).startswith("cooldown: the last retrain started 300 s ago")
    ledger.write({"id": "a4", "started": now - 90_000, "status": "canary", "version": 7})
    assert "canary is being watched (version 7" in _gates(spec, ledger, now)


def test_fresh_data_from_a_parquet_folder_and_the_labelled_requests_is_one_snapshot(tmp_path):
    """include_feedback with a parquet `data`: the fresh files are copied beside the labelled requests
    (none in this log), the run reads the snapshot, and min_rows counts both."""
    from raypipe.monitor.retrain import NotEnoughData, fresh_spec

    fresh = tmp_path / "landing"
    fresh.mkdir()
    for k in range(2):
        generate_transactions(700, seed=50 + k).to_parquet(fresh / f"day-{k}.parquet", index=False)
    data = small_spec(tmp_path / "store", name="t-fresh",
                      monitor={"retrain": {"on": ["drift"], "include_feedback": True, "min_rows": 1000,
                                           "data": {"type": "parquet", "path": str(fresh)}}})
    spec, rows = fresh_spec(raypipe.load_spec(data), "attempt-1")
    assert rows == 1400 and spec.data.source.type == "parquet" and spec.registry.promote_to == "champion"
    assert spec.evaluate.gate.vs_champion is not None and spec.evaluate.gate.vs_champion.metric == "f1"
    snapshot = Path(spec.data.source.path)
    assert sorted(p.name for p in snapshot.iterdir()) == ["fresh-00000.parquet", "fresh-00001.parquet"]
    data["monitor"]["retrain"]["min_rows"] = 2000
    with pytest.raises(NotEnoughData, match="1,400 fresh labelled rows < monitor.retrain.min_rows=2,000"):
        fresh_spec(raypipe.load_spec(data), "attempt-2")
