"""Monitoring the prediction log of a live endpoint: `raypipe monitor --last` checks the window the
endpoint answered (labels posted to /feedback make performance measured on exactly those rows),
and `--serve` keeps checking it as its own Serve application, with /monitor/status and gauges in
Ray's metrics equal to the window's report; a bad window is reported and the loop goes on.

One endpoint (one replica, logging with a short flush age) and one monitor application per module.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time

import httpx
import pyarrow as pa
import pytest
import yaml

import raypipe
from raypipe import predlog
from raypipe.monitor.logwindow import _answered_versions, _join_labels, _keep, window_bounds
from raypipe.progress import Progress
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import wait_for
from tests.monitor.helpers import monitor_cli

ROWS, LABELLED, WRONG = 300, 120, 20
MONITOR = {"log": {"flush_rows": 1000, "flush_seconds": 0.5}, "drift": {"min_rows": 50},
           "interval_s": 2, "window_s": 3600}


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("logmon")
    data = small_spec(d / "store", name="t-lmon", rows=3000, deploy={"port": free_port(), "route_prefix": "/lmon",
                                                                      "autoscaling": {"min_replicas": 1,
                                                                                      "max_replicas": 1}},
                      monitor=MONITOR)
    result = raypipe.run(data, progress=Progress(quiet=True))
    assert result.status == "ok"
    # the monitor's gate: accuracy only (the window's labels are chosen below, its ROC-AUC is not the point)
    data["evaluate"] = {"gate": {"min": {"accuracy": 0.5}}}
    path = d / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = raypipe.load_spec(path)
    return spec, path, result.version


@pytest.fixture(scope="module")
def answered(pipeline):
    """ROWS answers of the live endpoint (lists of 50 rows, ids lm-<k>:<i>), all in the log."""
    spec, _, v = pipeline
    ep = deploy(spec, app_name="lmon")
    rows = sample_request(spec, v, n=ROWS)
    assert len(rows) == ROWS
    answers = {}
    with httpx.Client(timeout=60) as http:
        for k in range(0, ROWS, 50):
            r = http.post(f"{ep.url}/predict", json=rows[k:k + 50], headers={"X-Request-ID": f"lm-{k}"})
            assert r.status_code == 200, r.text
            answers.update({a["request_id"]: a["prediction"] for a in r.json()["predictions"]})

    def logged() -> bool:
        t = predlog.read_log_table(spec.storage, spec.name, columns=[predlog.REQUEST_ID])
        return len(set(t[predlog.REQUEST_ID].to_pylist()) & set(answers)) == ROWS

    wait_for(logged, 60, f"{ROWS} log rows")
    yield ep, answers
    from ray import serve

    for app in set(serve.status().applications) & {"lmon", f"{spec.name}-monitor"}:
        serve.delete(app)  # the monitor's checks every 2 s would hold CPUs the next modules' Ray Data needs



def test_window_bounds_and_their_errors():
    now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    assert window_bounds("90m", now=now) == (now - dt.timedelta(minutes=90), now)
    assert window_bounds(since="2026-12-06T10:00:00", until="2026-12-06T11:00:00Z", now=now) == (
        now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
    assert window_bounds(since="2026-12-06T11:30:00+01:00", now=now)[0] == now - dt.timedelta(hours=1, minutes=30)
    for kwargs, said in [({"last": "5x"}, "--last='5x'"), ({"last": "0h"}, "positive"),
                         ({"since": "yesterday"}, "--since='yesterday'"), ({}, "--last"),
                         ({"since": "2026-12-06T11:00:00", "until": "2026-12-06T10:00:00"}, "not after"),
                         ({"last": "1h", "since": "2026-12-06T11:00:00"}, "not both")]:
        with pytest.raises(raypipe.errors.SpecError, match=re.escape(said)):
            window_bounds(now=now, **kwargs)


def test_labels_join_by_request_id_first_then_by_id_column_as_text():
    batch = pa.table({predlog.REQUEST_ID: ["a", "b", "c", "d"], "transaction_id": pa.array([1, 2, 3, None], pa.int64())})
    labels = {"request": {"a": "1"}, "ids": {"transaction_id": {"1": "0", "2": "0"}, "absent": {"x": "1"}}}
    out = _join_labels(batch, "is_fraud", labels)
    # "a": its request id's label, not transaction 1's "0"; "b" by its transaction id 2 (int64, compared as "2")
    assert out["is_fraud"].to_pylist() == ["1", "0", None, None]
    assert _join_labels(batch, "is_fraud", {"request": {}, "ids": {}}).column_names == batch.column_names


def test_shadow_rows_are_left_out_of_the_versions_and_of_each_versions_rows():
    t0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    batch = pa.table({predlog.VERSION: pa.array([1, 1, 2, 2, 3, 1], pa.int64()),
                      predlog.ROLE: ["champion", "champion", "shadow", "canary", "shadow", "champion"],
                      predlog.TS: pa.array([t0, t0, t0, t0, t0, t0 + dt.timedelta(hours=1)], predlog.TS_TYPE)})
    counts = _answered_versions(batch, t0, t0 + dt.timedelta(minutes=30))
    assert dict(zip(counts[predlog.VERSION].to_pylist(), counts["rows"].to_pylist())) == {1: 2, 2: 1}
    assert _keep(batch, 2)[predlog.ROLE].to_pylist() == ["canary"] and _keep(batch, 3).num_rows == 0


def test_logged_answers_become_the_score_matrix_of_each_task_with_nulls_where_none_was_logged():
    from raypipe.monitor.logwindow import logged_scores

    scores = pa.array([[("b", 0.7), ("a", 0.3)], None, [("a", 1.0)]], pa.map_(pa.string(), pa.float64()))
    out = logged_scores(pa.table({predlog.SCORES: scores}), "classification", ["a", "b"])
    # in the version's class order, whatever the map's order; a class absent from the map is null
    assert [out[c].to_pylist() for c in ("__s0", "__s1")] == [[0.3, None, 1.0], [0.7, None, None]]
    for task, column, values in [("regression", predlog.PREDICTION, pa.array([2.5, None])),
                                 ("clustering", predlog.CLUSTER, pa.array([3, 0], pa.int64())),
                                 ("anomaly", predlog.ANOMALY_SCORE, pa.array([0.9, 0.1]))]:
        out = logged_scores(pa.table({column: values}), task, None)
        assert out.schema.field("__s0").type == pa.float64() and out["__s0"].to_pylist() == values.cast(
            pa.float64()).to_pylist() and "__s1" not in out.column_names


LOGGED_AT = dt.datetime(2019, 6, 1, 10, 0, tzinfo=dt.timezone.utc)  # outside every other test's window
CLAIMED, UNANSWERED = 200, 40


def test_a_log_window_is_counted_by_its_logged_answers_and_rescored_only_where_none_was_logged(pipeline):
    """Log rows written by hand whose answers are not what the version would say (every row logged as
    class "1" at 0.99 on ordinary transactions, where the model answers mostly "0"), and some rows
    whose scores were not logged: the report's answer counts follow the log, and only the rows
    without a logged answer are scored by the version."""
    from raypipe.ingest.builtin.transactions import generate_transactions
    from raypipe.registry import Registry
    from tests.conftest import champion_predictor

    spec, _, v = pipeline
    rows = generate_transactions(CLAIMED + UNANSWERED, seed=21).drop(columns=["is_fraud"])
    vs = Registry.for_spec(spec).version_store(v)
    schema = vs.read_json("schema.json")
    logged = [{"0": 0.01, "1": 0.99}] * CLAIMED + [None] * UNANSWERED
    table = predlog.LogFormat(schema, "classification").table(
        {c: rows[c] for c in rows.columns}, {predlog.PREDICTION: ["1"] * CLAIMED + [None] * UNANSWERED,
                                             predlog.SCORES: logged},
        [f"claimed-{i}" for i in range(len(rows))], [LOGGED_AT + dt.timedelta(seconds=i) for i in range(len(rows))],
        v, "champion", "serve")
    predlog.write_log(spec.storage, spec.name, table, writer_id="claimed")
    served = [str(a["prediction"]) for a in champion_predictor(spec.storage, spec.name).predict_records(rows)]
    assert served[:CLAIMED].count("0") > CLAIMED // 2  # re-scoring these rows could not give all "1"

    check = raypipe.monitor(spec, since=LOGGED_AT, until=LOGGED_AT + dt.timedelta(hours=1))
    (report,) = check.reports
    answer = report.prediction_drift["parts"]["answer"]
    values = [*vs.read_json("monitor/predictions.json")["answer"]["values"], "other"]
    assert dict(zip(values, answer["counts"], strict=True)) == {
        "0": served[CLAIMED:].count("0"), "1": CLAIMED + served[CLAIMED:].count("1"), "other": 0}
    assert report.rescored_rows == UNANSWERED and report.valid_rows == CLAIMED + UNANSWERED
    assert answer["drifted"] is True  # the logged answers, not the model's, moved the answer distribution


def test_monitor_last_checks_the_window_the_endpoint_answered_and_estimates_without_labels(pipeline, answered,
                                                                                          capsys):
    _, path, v = pipeline
    code, summary, err = monitor_cli(capsys, str(path), "--last", "1h")
    assert summary is not None, err[-3000:]
    assert code == (5 if summary["alarm"] else 0), err[-3000:]
    assert summary["versions"] == [v] and summary["rows"] == ROWS and summary["labels"] == 0
    (report,) = summary["reports"]
    assert report["version"] == v and report["rows"] == ROWS and report["status"] in ("ok", "drift")
    assert report["performance"]["kind"] == "estimated"
    assert f"versions [{v}]" in err and "__request_id" not in report["columns"]


def test_an_empty_window_is_not_enough_data_and_a_bad_duration_exits_2(pipeline, answered, capsys):
    _, path, _ = pipeline
    code, summary, _ = monitor_cli(capsys, str(path), "--since", "2001-01-01T00:00:00", "--until", "2001-01-01T01:00:00")
    assert code == 0 and summary["status"] == "not_enough_data" and summary["versions"] == [] and summary["rows"] == 0
    code, _, err = monitor_cli(capsys, str(path), "--last", "an hour")
    assert code == 2 and "--last='an hour'" in err
    code, _, err = monitor_cli(capsys, str(path), "--last", "1h", "--input", str(path))
    assert code == 2 and "one of them" in err


def test_labels_posted_to_the_endpoint_make_performance_measured_on_exactly_those_rows(pipeline, answered, capsys):
    spec, path, v = pipeline
    ep, answers = answered
    ids = sorted(answers)[:LABELLED]
    # the endpoint's own answer as the label for all but WRONG rows: accuracy is exactly known
    body = [{"request_id": i, "label": answers[i] if k >= WRONG else 1 - int(answers[i])} for k, i in enumerate(ids)]
    r = httpx.post(f"{ep.url}/feedback", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["stored"] == LABELLED, r.text
    code, summary, err = monitor_cli(capsys, str(path), "--last", "1h")
    assert summary is not None, err[-3000:]
    assert summary["labels"] == LABELLED and summary["rows"] == ROWS
    perf = summary["reports"][0]["performance"]
    assert perf["kind"] == "measured"
    report = json.loads(open(f"{summary['reports'][0]['report']}/report.json").read())
    assert report["performance"]["rows"] == LABELLED
    assert perf["metrics"]["accuracy"] == pytest.approx((LABELLED - WRONG) / LABELLED)
    assert code == (5 if summary["alarm"] else 0)
    # the API answers the same window
    api = raypipe.monitor(spec, since=summary["window"]["start"], until=summary["window"]["end"])
    assert [r.version for r in api.reports] == [v] and api.reports[0].performance["rows"] == LABELLED


BIG, BIG_FILES = 10_000_000, 10
BIG_START = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
PEAK_RSS = """
import json, re, sys
from raypipe.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = int(e.code or 0)
# VmHWM: this process's own peak (ru_maxrss would keep the forking pytest's peak across exec)
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"code": code, "peak_rss_bytes": hwm}))
"""


def test_a_10m_row_window_keeps_the_drivers_memory_under_1gb(pipeline, answered, tmp_path):
    """10M log rows (the endpoint's answered rows repeated, in 10 files of one hour each, written by
    predlog's own writer) checked by `raypipe monitor --since/--until` in a driver of its own,
    connected to the session's Ray: its peak RSS stays under 1 GB (the window never reaches it)."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow.compute as pc
    import ray

    spec, path, v = pipeline
    seed = predlog.read_log_table(spec.storage, spec.name)
    seed = seed.filter(pc.starts_with(seed[predlog.REQUEST_ID], "lm-"))
    per = BIG // BIG_FILES
    rng = np.random.default_rng(0)
    for k in range(BIG_FILES):
        t = seed.take(pa.array(rng.integers(0, seed.num_rows, per)))
        ids = pc.binary_join_element_wise(f"big-{k}-", pc.cast(pa.array(np.arange(per)), pa.string()), "")
        start = BIG_START + dt.timedelta(hours=k)
        ts = pa.array(np.int64(start.timestamp() * 1e6) + np.arange(per, dtype=np.int64) * 3000).cast(predlog.TS_TYPE)
        t = t.set_column(t.schema.get_field_index(predlog.REQUEST_ID), predlog.REQUEST_ID, ids)
        t = t.set_column(t.schema.get_field_index(predlog.TS), predlog.TS, ts)
        assert len(predlog.write_log(spec.storage, spec.name, t.combine_chunks(), writer_id=f"big{k}")) == 1
        del t
    until = (BIG_START + dt.timedelta(hours=BIG_FILES)).isoformat()
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, "monitor", str(path), "--since", BIG_START.isoformat(),
                          "--until", until, "--address", ray.get_runtime_context().gcs_address, "--json"],
                         capture_output=True, text=True, timeout=900)
    lines = run.stdout.strip().splitlines()
    assert len(lines) >= 2, run.stderr[-3000:]
    summary, measured = json.loads(lines[-2]), json.loads(lines[-1])
    assert measured["code"] in (0, 5), run.stderr[-3000:]
    assert summary["rows"] == BIG and summary["versions"] == [v]
    print(f"10M-row window: driver peak RSS {measured['peak_rss_bytes'] / 2**20:.0f} MiB, "
          f"{time.monotonic() - began:.1f} s for the whole command (a figure, not a check)")
    assert measured["peak_rss_bytes"] < 2**30


def _scrape(names: tuple[str, ...]) -> dict[tuple[str, frozenset], float]:
    """The node's Prometheus page, lines of the ``ray_raypipe_*`` gauges named: (name, labels) -> value."""
    import ray

    node = ray._private.worker.global_worker.node
    page = httpx.get(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=120).text
    out = {}
    for line in page.splitlines():
        m = re.match(r"^(ray_raypipe_\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) in names:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_monitor_serve_answers_status_and_exports_the_reports_numbers_as_gauges(pipeline, answered):
    spec, _, v = pipeline
    url = raypipe.api.monitor_serve(spec)
    assert url.endswith("/lmon/monitor")
    status: dict = {}

    def checked() -> bool:
        nonlocal status
        try:
            status = httpx.get(f"{url}/status", timeout=30).json()
        except (httpx.HTTPError, ValueError):
            return False
        return status.get("state") == "ok" and status["last"]["rows"] == ROWS and status["last"]["labels"] == LABELLED

    wait_for(checked, 180, "a monitor check of the whole window")
    last = status["last"]
    report = last["reports"][0]
    assert last["versions"] == [v] and report["performance"]["kind"] == "measured"
    tags = {("pipeline", spec.name), ("version", str(v))}
    wanted = {("ray_raypipe_window_rows", frozenset(tags)): float(ROWS),
              ("ray_raypipe_multivariate_drift", frozenset(tags)): report["multivariate"]["auc"],
              ("ray_raypipe_performance", frozenset(tags | {("metric", "accuracy"), ("kind", "measured")})):
                  report["performance"]["metrics"]["accuracy"]}
    for col, c in report["columns"].items():
        wanted[("ray_raypipe_feature_drift", frozenset(tags | {("feature", col), ("statistic", c["statistic"])}))] = \
            c["value"]
    for part, p in (report["prediction_drift"] or {}).items():
        if isinstance(p, dict):
            wanted[("ray_raypipe_prediction_drift",
                    frozenset(tags | {("part", part), ("statistic", p["statistic"])}))] = p["value"]
    names = tuple({k[0] for k in wanted})
    seen: dict = {}

    def exported() -> bool:
        nonlocal seen
        page = _scrape(names)
        seen = {k: next((val for (n, labels), val in page.items() if n == k[0] and k[1] <= labels), None)
                for k in wanted}
        return all(x is not None for x in seen.values())

    wait_for(exported, 120, "the monitor's gauges on the metrics page")
    for k, value in wanted.items():
        assert seen[k] == pytest.approx(value, rel=1e-6), k


def test_the_served_monitor_takes_alertmanagers_webhook_once_per_alert(pipeline, answered):
    """POST <route>/monitor/alerts on the Serve application: a firing alert reaches Monitor.on_alert
    (status["alerts"]) once, its repeat is a duplicate, a bad payload a 400 (the contract itself:
    tests/monitor/test_alerts.py)."""
    spec, _, v = pipeline
    url = raypipe.api.monitor_serve(spec)
    alert = {"status": "firing", "labels": {"alertname": "RaypipeFeatureDrift", "pipeline": spec.name,
                                            "version": str(v), "feature": "amount"},
             "annotations": {}, "startsAt": "2026-12-06T10:00:00Z", "fingerprint": "served-1"}
    payload = {"version": "4", "groupKey": "{}:{alertname=\"RaypipeFeatureDrift\"}", "status": "firing",
               "alerts": [alert]}
    with httpx.Client(timeout=60) as http:
        wait_for(lambda: http.get(f"{url}/status").status_code == 200, 120, "the monitor application")
        first = http.post(f"{url}/alerts", json=payload)
        assert first.status_code == 200 and first.json()["accepted"] == 1, first.text
        assert http.post(f"{url}/alerts", json=payload).json() == {"accepted": 0, "duplicates": 1, "resolved": 0}
        assert http.post(f"{url}/alerts", json={"version": "3"}).status_code == 400
        status = http.get(f"{url}/status").json()
    assert status["alerts"]["received"] == 1 and status["alerts"]["last"][0]["labels"]["feature"] == "amount"
    assert status["inbox"]["duplicates"] == 1 and status["inbox"]["bad_posts"] == 1


def test_a_bad_window_is_reported_and_the_loop_goes_on(pipeline, answered, capsys):
    """A log file whose rows lack every `amount` (more missing than validate.max_missing_fraction):
    `--last` exits 3, the running monitor reports the failure and recovers once the file is gone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    spec, path, _ = pipeline
    url = raypipe.api.monitor_serve(spec)  # the running application: deploying again changes nothing
    t = predlog.read_log_table(spec.storage, spec.name)
    bad = t.set_column(t.schema.get_field_index("amount"), "amount", pa.nulls(t.num_rows, pa.float64()))
    bad = bad.set_column(t.schema.get_field_index(predlog.REQUEST_ID), predlog.REQUEST_ID,
                         pc.binary_join_element_wise("bad-", t[predlog.REQUEST_ID], ""))
    files = predlog.write_log(spec.storage, spec.name, bad, writer_id="bad-window")
    store = predlog.as_store(spec.storage)
    try:
        code, _, err = monitor_cli(capsys, str(path), "--last", "1h")
        assert code == 3 and "amount" in err

        def failed() -> bool:
            s = httpx.get(f"{url}/status", timeout=30).json()
            return s["state"] == "failed" and "amount" in s["error"]

        wait_for(failed, 120, "the monitor to report the bad window")
        before = httpx.get(f"{url}/status", timeout=30).json()["checks"]
    finally:
        for f in files:
            store.delete(f)

    def recovered() -> bool:
        s = httpx.get(f"{url}/status", timeout=30).json()
        return s["state"] == "ok" and s["checks"] > before and s["failures"] >= 1

    wait_for(recovered, 120, "a good check after the bad window")


def test_the_monitor_asks_for_the_endpoints_api_key_when_deploy_auth_is_on(pipeline, monkeypatch):
    """A pipeline with no log yet (so the check is quick and finds nothing): /status needs the key."""
    from ray import serve

    spec, _, _ = pipeline
    monkeypatch.setenv("RP_LMON_KEY", "s3cret-key")
    data = spec.model_dump(mode="json", by_alias=True)
    data["name"] = "t-lmon-auth"
    data["deploy"] = {**data["deploy"], "route_prefix": "/lmonauth", "auth": {"api_key_env": "RP_LMON_KEY"}}
    url = raypipe.api.monitor_serve(raypipe.load_spec(data))
    try:
        def answered() -> bool:
            try:
                return httpx.get(f"{url}/status", timeout=30).status_code == 401
            except httpx.HTTPError:
                return False

        wait_for(answered, 120, "the monitor application")
        assert "API key" in httpx.get(f"{url}/status", headers={"X-API-Key": "wrong"}, timeout=30).json()["error"]
        ok = httpx.get(f"{url}/status", headers={"Authorization": "Bearer s3cret-key"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["pipeline"] == "t-lmon-auth"
    finally:
        serve.delete("t-lmon-auth-monitor")
