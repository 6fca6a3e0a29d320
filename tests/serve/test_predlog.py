"""The prediction log and late labels on a live endpoint: every answer logged with its request id,
version and role; excluded columns never written; canary and shadow rows tagged; a killed replica
loses no answer (its replacement writes the victim's crash spool); labels joined by request id over HTTP and by an id column from a
file; `raypipe predict` logs its rows too."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import httpx
import pandas as pd
import pyarrow.compute as pc
import pytest

import raypipe
from raypipe import predlog
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import replicas, wait_for, with_deploy

PII = "customer_age"
LOG = {"flush_rows": 1000, "flush_seconds": 0.5, "exclude_columns": [PII]}


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    """Two versions of one pipeline (v1 champion, v2 challenger), logging with a short flush age."""
    storage = tmp_path_factory.mktemp("predlog") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-plog", rows=1500, deploy={"port": free_port()},
                                        monitor={"log": LOG}))
    first = raypipe.run(spec, progress=Progress(quiet=True))
    other = raypipe.load_spec(small_spec(storage, name="t-plog", rows=1500, deploy={"port": spec.deploy.port},
                                         monitor={"log": LOG},
                                         model={"kind": "sklearn:sklearn.linear_model:LogisticRegression",
                                                "params": {"max_iter": 300, "C": 0.01}}))
    second = raypipe.run(other, progress=Progress(quiet=True))
    reg = Registry(spec.storage, spec.name)
    reg.set_alias("champion", first.version, reason="test")
    reg.set_alias("challenger", second.version, reason="test")
    return spec, first.version, second.version, sample_request(spec, first.version, n=8)


@pytest.fixture(scope="module")
def endpoint(pipeline):
    spec, v1, _, _ = pipeline
    # one replica: /feedback writes the buffer of the replica it reaches, which then holds every answer
    from ray import serve

    ep = deploy(with_deploy(spec, route_prefix="/plog", autoscaling={"min_replicas": 1, "max_replicas": 1}),
                app_name="plog")
    assert ep.version == v1
    yield ep
    serve.delete("plog")  # a module's app left running holds CPU the next modules' Ray Data tasks need


def logged(spec, prefix: str, expected: int, timeout: float = 60.0):
    """The log rows whose request id starts with ``prefix``, once there are ``expected`` of them."""
    rows: list = []

    def enough() -> bool:
        nonlocal rows
        t = predlog.read_log_table(spec.storage, spec.name)
        rows = t.filter(pc.starts_with(t["__request_id"], prefix)).to_pylist() if t.num_rows else []
        return len(rows) >= expected

    wait_for(enough, timeout, f"{expected} log rows with ids {prefix}*")
    return rows


def test_every_answer_is_logged_with_its_request_id_version_role_and_inputs(pipeline, endpoint):
    spec, v1, _, rows = pipeline
    answers = []
    with httpx.Client(timeout=30) as http:
        for i, row in enumerate(rows):  # single rows, each with the client's own request id
            r = http.post(f"{endpoint.url}/predict", json=row, headers={"X-Request-ID": f"one-{i}"})
            assert r.status_code == 200 and r.headers["x-request-id"] == f"one-{i}" == r.json()["request_id"]
            answers.append((f"one-{i}", row, r.json()))
        r = http.post(f"{endpoint.url}/predict", json=rows[:3], headers={"X-Request-ID": "one-list"})
        body = r.json()
        assert [p["request_id"] for p in body["predictions"]] == ["one-list:0", "one-list:1", "one-list:2"]
        answers += [(p["request_id"], row, {**p, "version": body["version"]}) for p, row in zip(body["predictions"], rows)]
        made = http.post(f"{endpoint.url}/predict", json=rows[0])  # no id sent: Serve makes one, returned once
        assert made.json()["request_id"] == made.headers["x-request-id"] and "," not in made.headers["x-request-id"]
        bad = http.post(f"{endpoint.url}/predict", json=rows[0], headers={"X-Request-ID": "no spaces please"})
        assert bad.status_code == 400 and "X-Request-ID" in bad.json()["error"]
    log = {r["__request_id"]: r for r in logged(spec, "one-", len(answers))}
    status = httpx.get(f"{endpoint.url}/metadata", timeout=30).json()["prediction_log"]  # the one replica's writer
    assert status["buffered"] >= len(answers) + 1 and status["dropped"] == 0 and status["failed"] == 0
    assert sorted(log) == sorted(rid for rid, _, _ in answers)  # N answers -> N rows, no more
    for rid, row, answer in answers:
        got = log[rid]
        assert got["__version"] == v1 and got["__role"] == "champion" and got["__source"] == "serve"
        assert PII not in got  # excluded: never written
        assert all(got[k] == v or got[k] == pytest.approx(v) for k, v in row.items() if k != PII), (got, row)
        assert got["__prediction"] == str(answer["prediction"])
        assert dict(got["__scores"]) == pytest.approx(answer["scores"])
        assert got["__ts"].tzinfo is not None
    files = predlog.window_files(spec.storage, spec.name)
    assert files and all("/predictions/t-plog/date=" in f and "/hour=" in f and f.endswith(".parquet") for f in files)


def test_canary_and_shadow_rows_are_tagged(pipeline):
    spec, v1, v2, rows = pipeline
    canary = deploy(with_deploy(spec, route_prefix="/plog-canary", canary={"alias": "challenger", "percent": 50}),
                    app_name="plog-canary")
    shadow = deploy(with_deploy(spec, route_prefix="/plog-shadow", shadow=True), app_name="plog-shadow")
    with httpx.Client(timeout=30) as http:
        versions = {f"can-{i}": http.post(f"{canary.url}/predict", json=rows[i % len(rows)],
                                          headers={"X-Request-ID": f"can-{i}"}).json()["version"] for i in range(40)}
        for i in range(10):
            assert http.post(f"{shadow.url}/predict", json=rows[i % len(rows)],
                             headers={"X-Request-ID": f"sha-{i}"}).json()["version"] == v1
    can = logged(spec, "can-", 40)
    assert {r["__request_id"]: r["__version"] for r in can} == versions
    assert {(r["__version"], r["__role"]) for r in can} == {(v1, "champion"), (v2, "canary")}
    sha = logged(spec, "sha-", 20)  # each request: the champion's answer and the shadow's
    assert Counter((r["__version"], r["__role"]) for r in sha) == {(v1, "champion"): 10, (v2, "shadow"): 10}
    assert Counter(r["__request_id"] for r in sha) == {f"sha-{i}": 2 for i in range(10)}


def test_feedback_over_http_joins_by_request_id_counts_unknown_ids_and_conflicts(pipeline, endpoint):
    spec, _, _, rows = pipeline
    with httpx.Client(timeout=30) as http:
        one = http.post(f"{endpoint.url}/predict", json=rows[0]).json()
        many = http.post(f"{endpoint.url}/predict", json=rows[:2]).json()
        ids = [one["request_id"]] + [p["request_id"] for p in many["predictions"]]
        # sent at once: the replica writes its own buffer before looking the ids up
        r = http.post(f"{endpoint.url}/feedback", json=[{"request_id": ids[0], "label": 1},
                                                        {"request_id": ids[1], "label": 0},
                                                        {"request_id": "never-answered", "label": 1}])
        assert r.status_code == 200, r.text
        assert {k: r.json()[k] for k in ("rows", "matched", "unknown", "conflicts", "stored")} == \
            {"rows": 3, "matched": 2, "unknown": 1, "conflicts": 0, "stored": 2}
        assert r.json()["unknown_ids"] == ["never-answered"]
        again = http.post(f"{endpoint.url}/feedback", json={"request_id": ids[0], "label": 0}).json()
        assert (again["conflicts"], again["stored"], again["conflict_ids"]) == (1, 0, [ids[0]])
        stored = {r["request_id"]: r["label"] for r in predlog.read_feedback(spec.storage, spec.name).to_pylist()}
        assert stored[ids[0]] == "1" and stored[ids[1]] == "0"

        def refused(body, status, says, **kw):
            resp = http.post(f"{endpoint.url}/feedback", content=body, **kw)
            assert resp.status_code == status and says in resp.text, (body, resp.status_code, resp.text)
            return resp.json()

        refused(b'{"request_id": "x", "label": ', 400, "not valid JSON")
        assert refused(b'{"label": 1}', 422, "request_id")["detail"][0]["loc"] == ["request_id"]
        refused(json.dumps({"request_id": "x", "label": 1, "extra": 2}).encode(), 422, "extra")
        refused(json.dumps([{"request_id": ids[2], "label": 7}]).encode(), 422, "not a class")
        refused(b"[]", 422, "at least one label")
        refused(b"", 400, "empty body")
        refused(b"request_id=x", 415, "application/json", headers={"content-type": "text/plain"})
        refused(b"[" + b'{"request_id": "x", "label": 1},' * 40000 + b"]", 413, "max_body_bytes")
        assert http.post(f"{endpoint.url}/predict", json=rows[0]).status_code == 200  # still serving


def test_raypipe_predict_logs_its_rows_and_feedback_joins_a_file_by_id_column(pipeline, tmp_path, capsys):
    from raypipe.cli import main

    spec, v1, _, rows = pipeline
    src = tmp_path / "rows.parquet"
    pd.DataFrame.from_records(rows).to_parquet(src)
    summary = raypipe.predict(spec, str(src), str(tmp_path / "out"))
    out = pd.read_parquet(tmp_path / "out")
    assert summary["rows"] == len(rows) and out["request_id"].notna().all()
    t = predlog.read_log_table(spec.storage, spec.name)
    batch = t.filter(pc.equal(t["__source"], "predict")).to_pylist()
    assert sorted(r["__request_id"] for r in batch) == sorted(out["request_id"])
    assert {(r["__version"], r["__role"]) for r in batch} == {(v1, "champion")} and PII not in batch[0]
    by_id = out.set_index("request_id")
    assert all(r["__prediction"] == str(by_id.loc[r["__request_id"], "prediction"]) for r in batch)

    labels = tmp_path / "labels.csv"  # by id column: every logged answer of that transaction
    ids = [rows[0]["transaction_id"], rows[1]["transaction_id"], "no-such-transaction"]
    pd.DataFrame({"transaction_id": ids, "label": [1, 0, 1]}).to_csv(labels, index=False)
    main(["feedback", spec_file(spec, tmp_path), "--input", str(labels), "--id-column", "transaction_id", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: report[k] for k in ("rows", "matched", "unknown", "conflicts")} == \
        {"rows": 3, "matched": 2, "unknown": 1, "conflicts": 0}
    by_request = tmp_path / "by_request.parquet"  # by request id, as `raypipe predict` wrote them
    pd.DataFrame({"request_id": list(out["request_id"][:3]), "label": [1, 1, 0]}).to_parquet(by_request)
    main(["feedback", spec_file(spec, tmp_path), "--input", str(by_request), "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["matched"] == 3
    with pytest.raises(SystemExit) as bad:
        main(["feedback", spec_file(spec, tmp_path), "--input", str(labels), "--id-column", "amount"])
    assert bad.value.code == 2 and "data.id_columns" in capsys.readouterr().err


def spec_file(spec, tmp_path) -> str:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True)))
    return str(path)


def _recovered_rows_metric() -> float:
    """``ray_raypipe_prediction_log_rows_total{state="recovered"}`` on this node's Prometheus page, summed."""
    import ray

    node = ray._private.worker.global_worker.node
    page = httpx.get(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=60).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("ray_raypipe_prediction_log_rows_total{") and 'state="recovered"' in line
               and 'pipeline="t-plog"' in line)


def test_a_killed_replica_loses_no_answer_its_replacement_writes_them_and_counts_them(pipeline):
    """SIGKILL under load, while every answer the replica gave is still in its memory (flush_rows and
    flush_seconds too large to write): the replacement writes the victim's crash spool, so every
    answer a client received is logged once, and the rows are counted as recovered, in the
    replacement's /metadata and in Ray's Prometheus page."""
    spec, _, _, rows = pipeline
    s = with_deploy(spec, route_prefix="/plog-kill", autoscaling={"min_replicas": 1, "max_replicas": 1})
    s = raypipe.load_spec({**s.model_dump(mode="json", by_alias=True),
                           "monitor": {"log": {"flush_rows": 100_000, "flush_seconds": 3600,
                                               "max_buffer_rows": 200_000}}})
    before = _recovered_rows_metric()
    ep = deploy(s, app_name="plog-kill")
    wait_for(lambda: len(replicas("plog-kill")) == 1, 60, "one replica")
    victim_id, victim_pid = next(iter(replicas("plog-kill").items()))
    answered: dict[str, float] = {}  # request id -> when its answer arrived (wall clock)
    stop, lock = threading.Event(), threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not stop.is_set():
                rid = f"kill-{k}-{n}"
                n += 1
                try:
                    r = http.post(f"{ep.url}/predict", json=rows[n % len(rows)], headers={"X-Request-ID": rid})
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    with lock:
                        answered[rid] = time.time()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answered) >= 100, 60, "answers held by the victim")
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: victim_id not in replicas("plog-kill") and len(replicas("plog-kill")) == 1, 90,
                 "a replacement replica")
        n_after = len(answered)
        wait_for(lambda: len(answered) >= n_after + 30, 60, "answers from the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    meta = httpx.get(f"{ep.url}/metadata", timeout=30).json()["prediction_log"]
    from ray import serve

    serve.delete("plog-kill")  # a graceful stop: the replacement writes its buffer (ModelServer.__del__)
    log = predlog.read_log_table(spec.storage, spec.name, columns=["__request_id", "__ts"])
    mine = log.filter(pc.starts_with(log["__request_id"], "kill-"))
    ids = mine["__request_id"].to_pylist()
    assert len(ids) == len(set(ids))  # no row twice
    lost = set(answered) - set(ids)
    victims = [t.timestamp() < killed_at for t in mine["__ts"].to_pylist()]
    print(f"replica killed under load: {len(answered)} answered, {len(ids)} logged, {len(lost)} lost, "
          f"{sum(victims)} recovered from the victim's spool")
    assert not lost, sorted(lost)[:5]
    assert sum(victims) >= 100  # the victim wrote nothing itself: these came from its spool
    assert meta["recovered"] == sum(victims)
    wait_for(lambda: _recovered_rows_metric() - before == sum(victims), 60, "the recovered rows in Ray's metrics")
