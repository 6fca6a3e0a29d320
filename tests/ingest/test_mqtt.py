"""The MQTT source against a real Mosquitto broker: exact landing through restarts, quarantine, windows, a run.

A publisher plays 50 machines of the built-in ``sensors`` set at QoS 1 on
``plant/<machine>/sensors``, with bad messages mixed in. Every wait polls a condition (the
files on disk, the actor's status) with a generous deadline; no assertion depends on timing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pyarrow.parquet as pq
import pytest

from raypipe.errors import DataValidationError, SpecError
from raypipe.ingest.landing import QUARANTINE, Landing
from raypipe.spec import load_spec
from tests.conftest import small_spec, statuses
from tests.mqtt_broker import Publisher, sensor_messages, start_mosquitto

TOPICS = ["plant/+/sensors"]


@pytest.fixture
def broker(tmp_path):
    url, stop, restart = start_mosquitto(tmp_path / "broker")
    yield url, restart
    stop()


def mqtt_spec(tmp_path, url: str, name: str = "t-mqtt", **source) -> dict:
    src = {"type": "mqtt", "broker": url, "topics": TOPICS, "landing": str(tmp_path / "landing"),
           "batch_messages": 50, "batch_seconds": 0.2, **source}
    return small_spec(tmp_path / "store", name=name, data={"source": src, "target": "failure_soon",
                                                           "id_columns": ["machine_id"]})


def with_bad(messages: list[dict]) -> tuple[list[tuple[str, bytes]], int, int]:
    """(topic, payload) pairs: the good rows plus 10 not JSON, 10 with a string in a number column and 5 that
    lack a column, spread through the stream; and the good and bad counts."""
    out = [(f"plant/{m['machine_id']}/sensors", json.dumps(m).encode()) for m in messages]
    bad = []
    for i in range(10):
        bad.append((f"plant/M9-{i}/sensors", b"{not json " + str(i).encode()))
        wrong = dict(messages[i], temperature_c="hot", cycle=10_000 + i)
        bad.append((f"plant/{wrong['machine_id']}/sensors", json.dumps(wrong).encode()))
    for i in range(5):
        short = {k: v for k, v in messages[20 + i].items() if k != "vibration_mm_s"}
        bad.append((f"plant/{short['machine_id']}/sensors", json.dumps({**short, "cycle": 20_000 + i}).encode()))
    step = len(out) // len(bad)
    for k, b in enumerate(bad):
        out.insert(5 + k * (step + 1), b)
    return out, len(messages), len(bad)


def wait_for(condition, what: str, deadline_s: float = 60.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"still waiting for {what} after {deadline_s:.0f} s")


def on_disk(landing: str) -> tuple[int, int, list[str], list[str]]:
    """(landed rows, quarantined rows, every landed id, every quarantine reason) read back from the files."""
    land = Landing(landing)
    rows = [pq.read_table(os.path.join(landing, f.name)) for f in land.files()]
    bad = [pq.read_table(os.path.join(landing, f.name)) for f in land.files(QUARANTINE)]
    ids = [i for t in rows for i in t["__msg_id"].to_pylist()]
    reasons = [r for t in bad for r in t["reason"].to_pylist()]
    return sum(t.num_rows for t in rows), sum(t.num_rows for t in bad), ids, reasons


def test_every_message_is_landed_or_quarantined_once_through_a_broker_restart_and_an_actor_kill(
        ray_session, broker, tmp_path):
    import ray

    from raypipe.ingest.mqtt import ingest_status, start_ingest, stop_ingest

    url, restart = broker
    spec = load_spec(mqtt_spec(tmp_path, url))
    actor = start_ingest(spec)
    try:
        wait_for(lambda: ingest_status(spec)["subscribed"], "the ingest actor to subscribe")
        stream, good, bad = with_bad(sensor_messages(machines=50, per_machine=12))
        pub = Publisher(url)
        third = len(stream) // 3
        for topic, payload in stream[:third]:
            pub.publish(topic, payload)
        restart()  # queued and unacknowledged messages survive in the broker's persistence file
        for topic, payload in stream[third: 2 * third]:
            pub.publish(topic, payload)
        ray.kill(actor, no_restart=False)  # Ray restarts it: it rebuilds the landed ids and rejoins its session
        for topic, payload in stream[2 * third:]:
            pub.publish(topic, payload)
        pub.close()
        assert pub.published == len(stream) == good + bad
        landing = spec.data.source.landing
        wait_for(lambda: sum(on_disk(landing)[:2]) >= len(stream), "every message on disk")
        landed, quarantined, ids, reasons = on_disk(landing)
        assert (landed, quarantined) == (good, bad)  # exact: nothing lost, nothing landed twice
        assert len(set(ids)) == len(ids) == landed
        assert sum(r.startswith("not JSON") for r in reasons) == 10
        assert sum("'temperature_c': str \"hot\" is not number" in r for r in reasons) == 10
        assert sum(r == "missing column 'vibration_mm_s'" for r in reasons) == 5
        status = ingest_status(spec)
        assert status["columns"]["temperature_c"] == "number" and status["columns"]["cycle"] == "integer"
    finally:
        final = stop_ingest(spec)
    assert final["pending"] == 0
    assert sum(on_disk(landing)[:2]) == len(stream)  # stopping landed nothing more, nothing twice


def test_a_redelivered_message_is_landed_once_also_after_a_restart(broker, tmp_path):
    """The same message again (a redelivery) is a duplicate, in the same micro-batch, a later one, or after
    the ingest restarted (its ids are rebuilt from the files); the broker gets every message acknowledged."""
    from raypipe.ingest.mqtt import MqttIngest

    url, _ = broker
    spec = load_spec(mqtt_spec(tmp_path, url, id_field="msg"))
    src = spec.data.source
    ingest = MqttIngest(src, "rp-dup-test", None, ("failure_soon",))
    pub = Publisher(url, "rp-dup-pub")
    try:
        wait_for(lambda: ingest.status()["subscribed"], "the subscription")
        rows = sensor_messages(machines=3, per_machine=2)
        for i, r in enumerate(rows):
            pub.publish(f"plant/{r['machine_id']}/sensors", json.dumps({**r, "msg": i}))
        pub.publish("plant/x/sensors", json.dumps({**rows[0], "msg": 0}))  # the same id: a redelivery
        wait_for(lambda: ingest.status()["landed"] + ingest.status()["duplicates"] == 7, "7 messages handled")
        assert ingest.status()["duplicates"] == 1
        ingest.stop()
        again = MqttIngest(src, "rp-dup-test", None, ("failure_soon",))
        wait_for(lambda: again.status()["subscribed"], "the second subscription")
        pub.publish("plant/y/sensors", json.dumps({**rows[3], "msg": 3}))
        pub.publish("plant/y/sensors", json.dumps({**rows[3], "msg": 99}))
        wait_for(lambda: again.status()["landed"] + again.status()["duplicates"] == 2, "2 more handled")
        assert (again.status()["landed"], again.status()["duplicates"]) == (1, 1)
        again.stop()
    finally:
        pub.close()
    landed, _, ids, _ = on_disk(src.landing)
    assert landed == 7 and sorted(ids) == sorted(f"id:{i}" for i in [0, 1, 2, 3, 4, 5, 99])


def test_a_schema_file_types_the_rows_and_a_wrong_type_is_quarantined(broker, tmp_path):
    from raypipe.ingest.mqtt import MqttIngest, schema_columns

    url, _ = broker
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"columns": {"machine_id": {"type": "string"}, "cycle": {"type": "integer"},
                                              "temperature_c": {"type": "number"},
                                              "failure_soon": {"type": "integer"}}}))
    raw = mqtt_spec(tmp_path, url)
    raw["validate"] = {"schema": str(schema)}
    spec = load_spec(raw)
    ingest = MqttIngest(spec.data.source, "rp-schema-test", schema_columns(spec))
    pub = Publisher(url, "rp-schema-pub")
    try:
        wait_for(lambda: ingest.status()["subscribed"], "the subscription")
        good = {"machine_id": "A", "cycle": 1, "temperature_c": 70, "failure_soon": 0, "extra": "dropped"}
        pub.publish("plant/A/sensors", json.dumps(good))
        pub.publish("plant/A/sensors", json.dumps({**good, "cycle": 1.5}))
        pub.publish("plant/A/sensors", b"[1, 2]")
        wait_for(lambda: ingest.status()["landed"] + ingest.status()["quarantined"] == 3, "3 messages handled")
    finally:
        ingest.stop()
        pub.close()
    table = pq.read_table(os.path.join(spec.data.source.landing, Landing(spec.data.source.landing).files()[0].name))
    assert table.column_names == ["machine_id", "cycle", "temperature_c", "failure_soon", *("__msg_id", "__topic",
                                                                                          "__arrived")]
    assert table["temperature_c"].to_pylist() == [70.0]
    _, _, _, reasons = on_disk(spec.data.source.landing)
    assert sorted(reasons) == ["column 'cycle': float 1.5 is not integer", "not a JSON object: a list"]


def test_a_run_trains_on_a_window_of_the_landing(ray_session, broker, tmp_path):
    """The ingest stage reads the window through Ray Data; the fingerprint is the window's: the same window
    gives a cached run, a new micro-batch a new one; a window of messages takes the newest micro-batches."""
    import raypipe
    from raypipe.ingest.mqtt import MqttIngest, window_files
    from raypipe.ingest.sources import data_fingerprint

    url, _ = broker
    raw = mqtt_spec(tmp_path, url, name="t-mqtt-run", batch_messages=200)
    empty = load_spec(raw)
    with pytest.raises(DataValidationError, match=r"no landed messages yet: start the ingest actor \(`raypipe "
                                                  r"ingest-stream SPEC`"):
        raypipe.run(empty, until="ingest")
    ingest = MqttIngest(empty.data.source, "rp-run-test", None, ("failure_soon", "machine_id"))
    pub = Publisher(url, "rp-run-pub")
    try:
        wait_for(lambda: ingest.status()["subscribed"], "the subscription")
        for m in sensor_messages(machines=50, per_machine=12):
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: ingest.status()["landed"] == 600, "600 rows landed")
        spec = load_spec(raw)
        before = data_fingerprint(spec.data.source)
        assert data_fingerprint(spec.data.source) == before
        result = raypipe.run(spec)
        assert statuses(result)["train"] == "ran"
        assert result.outputs["ingest"].outputs.input_rows == 600 and result.version == 1
        assert statuses(raypipe.run(spec, until="ingest"))["ingest"] == "cached"  # the same window
        small = load_spec({**raw, "data": {**raw["data"], "source": {**raw["data"]["source"],
                                                                     "window": {"messages": 150}}}})
        newest = window_files(small.data.source)
        assert len(newest) == 1 and newest[0] == window_files(spec.data.source)[-1]
        m = sensor_messages(machines=1, per_machine=1, seed=9)[0]
        pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: ingest.status()["landed"] == 601, "one more row landed")
        assert data_fingerprint(spec.data.source) != before
    finally:
        ingest.stop()
        pub.close()


def test_the_spec_refuses_credentials_in_the_url_and_an_unclear_window(tmp_path):
    raw = mqtt_spec(tmp_path, "mqtt://user:secret@127.0.0.1:1883")
    with pytest.raises(SpecError, match="data.source.broker: the URL holds credentials.*username_env and "
                                        "password_env") as e:
        load_spec(raw)
    assert "secret" not in str(e.value)
    raw = mqtt_spec(tmp_path, "mqtt://127.0.0.1:1883", window={"seconds": 10, "messages": 5})
    with pytest.raises(SpecError, match="data.source.window: .*exactly one of window.seconds"):
        load_spec(raw)
    raw = mqtt_spec(tmp_path, "tcp://127.0.0.1:1883")
    with pytest.raises(SpecError, match=r"data.source.broker: write mqtt://host:1883"):
        load_spec(raw)


def test_a_missing_credential_variable_is_named(tmp_path, monkeypatch):
    from raypipe.ingest.mqtt_wire import credentials

    monkeypatch.delenv("RP_TEST_MQTT_PASSWORD", raising=False)
    with pytest.raises(SpecError, match="data.source.password_env: the environment variable "
                                        "'RP_TEST_MQTT_PASSWORD' is not set"):
        credentials(None, "RP_TEST_MQTT_PASSWORD")


def test_windows_and_their_fingerprints_come_from_the_landed_file_names_and_sizes(tmp_path):
    from raypipe.ingest.landing import window_fingerprint

    land = Landing(str(tmp_path / "landing"))
    cols = {"x": "number", "machine_id": "string"}
    for k, t in enumerate((1_000, 61_000, 121_000)):
        rows = [{"x": float(i), "machine_id": f"m{i}"} for i in range(10 * (k + 1))]
        land.write_batch(rows, cols, [f"id:{t}-{i}" for i in range(len(rows))], ["t"] * len(rows), t)
    (tmp_path / "landing" / "batch-0000000200000-abc-000001.parquet.tmp-dead").write_bytes(b"half a file")
    assert [f.arrived_ms for f in land.window(seconds=70, now_ms=130_000)] == [61_000, 121_000]
    assert [f.arrived_ms for f in land.window(messages=30)] == [121_000]
    assert [f.arrived_ms for f in land.window(messages=31)] == [61_000, 121_000]
    assert [f.arrived_ms for f in land.window(messages=10_000)] == [1_000, 61_000, 121_000]
    w = land.window(messages=31)
    assert window_fingerprint(w) == window_fingerprint(land.window(messages=31))
    assert window_fingerprint(w) != window_fingerprint(land.window(messages=60))
    land.remove_temporary()
    assert len(os.listdir(tmp_path / "landing")) == 3 and len(land.seen_ids()) == 60


def test_the_ingest_stream_command_starts_reports_and_stops_the_actor(ray_session, broker, tmp_path, capsys):
    import yaml

    from raypipe.cli import main

    url, _ = broker
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(mqtt_spec(tmp_path, url, name="t-mqtt-cli")))
    main(["ingest-stream", str(path), "--no-blocking"])  # the session's Ray is not this command's own
    started = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert started["landed"] == 0 and started["client_id"] == "raypipe-t-mqtt-cli"
    spec = load_spec(path)
    from raypipe.ingest.mqtt import ingest_status

    wait_for(lambda: ingest_status(spec)["subscribed"], "the subscription")
    pub = Publisher(url, "rp-cli-ingest-pub")
    for m in sensor_messages(machines=3, per_machine=1):
        pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
    pub.publish("plant/x/sensors", b"nope")
    pub.close()
    wait_for(lambda: ingest_status(spec)["landed"] + ingest_status(spec)["quarantined"] == 4, "4 handled")
    main(["ingest-stream", str(path), "--stop"])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (final["received"], final["landed"], final["quarantined"], final["duplicates"]) == (4, 3, 1, 0)
    with pytest.raises(SystemExit) as e:
        main(["ingest-stream", str(path), "--status"])
    assert e.value.code == 2
    assert "no MQTT ingest actor runs for 't-mqtt-cli'" in capsys.readouterr().err


def test_a_window_of_seconds_with_nothing_recent_says_when_the_newest_batch_landed(tmp_path):
    from raypipe.ingest.mqtt import read_mqtt

    spec = load_spec(mqtt_spec(tmp_path, "mqtt://127.0.0.1:1883", window={"seconds": 60}))
    land = Landing(spec.data.source.landing)
    land.write_columns({"x": "number"})
    land.write_batch([{"x": 1.0}], {"x": "number"}, ["id:1"], ["t"], 1_700_000_000_000)
    with pytest.raises(DataValidationError, match=r"no micro-batch landed in the last 60 s \(the newest in .* "
                                                  r"arrived 2023-11-14 22:13:20 UTC\); is the ingest actor running"):
        read_mqtt(spec.data.source)


def test_messages_landed_but_never_acknowledged_come_again_and_are_not_landed_twice(broker, tmp_path):
    """The process dies between the sync and the acks: the broker delivers the batch again to the restarted
    ingest (same persistent session), which finds every id landed and only acknowledges them."""
    from raypipe.ingest.mqtt import MqttIngest

    url, _ = broker
    src = load_spec(mqtt_spec(tmp_path, url)).data.source
    first = MqttIngest(src, "rp-crash-test", None, ("failure_soon",))
    first.client.ack = lambda mid, qos: None  # it dies after landing, before acknowledging
    pub = Publisher(url, "rp-crash-pub")
    try:
        wait_for(lambda: first.status()["subscribed"], "the subscription")
        messages = sensor_messages(machines=20, per_machine=1)
        for m in messages:
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: first.status()["landed"] == 20, "20 rows landed")
        first._stop.set()
        first.client.disconnect()
        first.client.loop_stop()
        again = MqttIngest(src, "rp-crash-test", None, ("failure_soon",))
        wait_for(lambda: again.status()["duplicates"] == 20, "the 20 redelivered messages")
        assert again.status()["landed"] == 0 and again.status()["already_landed"] == 20
        again.stop()
        third = MqttIngest(src, "rp-crash-test", None, ("failure_soon",))  # now acknowledged: nothing comes again
        wait_for(lambda: third.status()["subscribed"], "the third subscription")
        pub.publish("plant/z/sensors", json.dumps(messages[0] | {"cycle": 999}))
        # handled = landed or counted as a duplicate (a batch taken from `pending` is being written until `landed` moves)
        wait_for(lambda: third.status()["landed"] + third.status()["duplicates"] >= 1, "one message handled")
        assert (third.status()["received"], third.status()["landed"], third.status()["duplicates"]) == (1, 1, 0)
        third.stop()
    finally:
        pub.close()
    landed, _, ids, _ = on_disk(src.landing)
    assert landed == len(set(ids)) == 21


def test_on_its_own_ray_the_command_lands_until_sigterm_then_stops_the_actor(broker, tmp_path):
    """No `raypipe up` Ray and no address: the actor would die with the command's Ray, so the command
    blocks; SIGTERM lands what is pending, stops the actor and exits 0 with its final counts."""
    import signal
    import subprocess
    import sys

    import yaml

    url, _ = broker
    raw = mqtt_spec(tmp_path, url, name="t-mqtt-own")
    ray_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    raw["ray"] = {"num_cpus": 1, "temp_dir": ray_dir}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "raypipe", "ingest-stream", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        line = proc.stdout.readline()  # printed once the actor runs
        assert line, proc.stderr.read()
        started = json.loads(line)
        assert started["landed"] == 0
        pub = Publisher(url, "rp-own-pub")
        messages = sensor_messages(machines=4, per_machine=1)
        for m in messages:  # the actor subscribed (or the broker queues them for its persistent session)
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        pub.close()
        wait_for(lambda: on_disk(raw["data"]["source"]["landing"])[0] == 4 or proc.poll() is not None, "4 landed")
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, errs
    final = json.loads(out.strip().splitlines()[-1])
    assert final["landed"] == 4 and final["pending"] == 0
    assert "landing until Ctrl-C" in errs
