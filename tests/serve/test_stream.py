"""Stream scoring against a real Mosquitto broker with a small trained champion.

Fifty machines of the built-in ``sensors`` set publish at QoS 1; a listener collects the
predictions. Waits poll a condition with a generous deadline; nothing depends on timing.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest

from raypipe.registry import Registry
from raypipe.spec import load_spec
from tests.conftest import champion_predictor, small_spec
from tests.mqtt_broker import Publisher, sensor_messages, start_mosquitto

NAME = "t-stream"


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """Two versions of a small sensors model (seed 1 then seed 2); the champion is version 1."""
    import raypipe

    storage = tmp_path_factory.mktemp("stream") / "store"
    specs = []
    for seed in (1, 2):
        raw = small_spec(storage, name=NAME, data={"source": {"type": "builtin", "name": "sensors", "rows": 1500,
                                                              "seed": seed},
                                                   "target": "failure_soon", "id_columns": ["machine_id"]})
        spec = load_spec(raw)
        raypipe.run(spec)
        specs.append(spec)
    reg = Registry.for_spec(specs[0])
    assert reg.versions() == [1, 2]
    reg.set_alias("champion", 1, reason="test: start from version 1")
    return specs[0], storage


@pytest.fixture
def broker(tmp_path):
    url, stop, _ = start_mosquitto(tmp_path / "broker")
    yield url
    stop()


class Listener:
    """Collects the predictions published on ``plant/+/predictions``, in arrival order."""

    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt

        from raypipe.ingest.mqtt_wire import broker_address

        host, port, _ = broker_address(url)
        self.got: list[dict] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="rp-listener")
        self.client.on_connect = lambda c, *a: c.subscribe("plant/+/predictions", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.ready.wait(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition, what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"still waiting for {what} after {deadline_s:.0f} s")


def test_one_prediction_per_good_message_in_order_per_device_logged_and_hot_swapped(trained, broker):
    from raypipe.predlog import read_log_table
    from raypipe.serve.stream import StreamScorer

    spec, storage = trained
    prepared: list[int] = []

    def prepare(df):
        prepared.append(len(df))
        return df

    scorer = StreamScorer(spec, broker, ["plant/+/sensors"], publish="plant/{device}/predictions",
                          batch_messages=40, batch_seconds=0.1, check_every_s=0, prepare=prepare)
    listener = Listener(broker)
    scorer.start()
    assert scorer.subscribed.wait(30)
    messages = sensor_messages(machines=50, per_machine=6, seed=5)
    first, second = messages[:150], messages[150:]
    pub = Publisher(broker, "rp-stream-pub")
    try:
        for k, m in enumerate(first):
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
            if k == 30:  # a wrong type and a message that is not JSON: quarantined, the stream goes on
                pub.publish("plant/bad/sensors", json.dumps({**m, "temperature_c": "hot"}))
                pub.publish("plant/bad/sensors", b"\xff not json")
        wait_for(lambda: len(listener.got) == len(first), "the first half's predictions")
        Registry.for_spec(spec).set_alias("champion", 2, reason="test: hot swap")
        for m in second:
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: len(listener.got) == len(messages), "every prediction")
    finally:
        pub.close()
        counts = scorer.stop()
        listener.close()
    got = listener.got
    assert len(got) == len(messages) == counts["scored"] == counts["published"]
    assert counts["quarantined"] == 2 and counts["swaps"] == 1 and sum(prepared) == len(messages)
    assert len({g["id"] for g in got}) == len(got)  # exactly one per message
    sent, answered = defaultdict(list), defaultdict(list)
    for m in messages:
        sent[m["machine_id"]].append(m["cycle"])
    by_id = {}
    for m in messages:
        from raypipe.ingest.mqtt_wire import message_id

        payload = json.dumps(m).encode()
        by_id[message_id(f"plant/{m['machine_id']}/sensors", payload, m, None)] = m
    for g in got:
        answered[g["device"]].append(by_id[g["id"]]["cycle"])
    assert answered == sent  # in order per device
    assert {g["version"] for g in got[: len(first)]} == {1} and {g["version"] for g in got[len(first):]} == {2}
    # the same answers as the batch path's Predictor gives for the same rows
    expected = champion_predictor(storage, NAME).predict_records(second)  # the champion is version 2 now
    assert [{k: g[k] for k in expected[0]} for g in got[len(first):]] == expected
    logged = read_log_table(str(storage), NAME)
    assert logged.num_rows == len(messages)
    assert set(logged["__source"].to_pylist()) == {"stream"}
    assert sorted(logged["__request_id"].to_pylist()) == sorted(g["request_id"] for g in got)
    import raypipe

    window = raypipe.monitor(spec, last="1h")  # `raypipe monitor --last 1h` sees the streamed traffic
    assert {r.version: r.rows for r in window.reports} == {1: len(first), 2: len(second)}


def test_the_quarantine_keeps_each_bad_message_with_its_reason(trained, broker):
    import pyarrow.parquet as pq

    from raypipe.ingest.landing import QUARANTINE, Landing
    from raypipe.serve.stream import StreamScorer

    spec, storage = trained
    scorer = StreamScorer(spec, broker, ["plant/+/sensors"], batch_messages=10, batch_seconds=0.1)
    scorer.start()
    assert scorer.subscribed.wait(30)
    good = sensor_messages(machines=2, per_machine=1, seed=7)
    missing = {k: v for k, v in good[0].items() if k != "rpm"}
    scorer.score([("plant/a/sensors", json.dumps(missing).encode(), 0.0),
                  ("plant/a/sensors", json.dumps(good[1]).encode(), 0.0),
                  ("plant/a/sensors", json.dumps({**good[0], "cycle": "three"}).encode(), 0.0)])
    assert scorer.counts["quarantined"] == 2 and scorer.counts["scored"] == 1

    def broken(df):
        raise RuntimeError("window state lost")

    scorer.prepare = broken  # a batch that cannot be scored is kept with the error, and the stream goes on
    scorer.score([("plant/b/sensors", json.dumps(good[0]).encode(), 0.0)])
    scorer.prepare = lambda df: df
    scorer.score([("plant/b/sensors", json.dumps(good[1]).encode(), 0.0)])
    scorer.stop()
    assert (scorer.counts["quarantined"], scorer.counts["scored"], scorer.counts["failed_batches"]) == (3, 2, 1)
    land = Landing(str(storage / "stream" / NAME))
    reasons = [r for f in land.files(QUARANTINE)
               for r in pq.read_table(f"{land.path}/{f.name}")["reason"].to_pylist()]
    assert "missing column 'rpm'" in reasons and "column 'cycle': str \"three\" is not number" in reasons
    assert "scoring failed: RuntimeError: window state lost" in reasons


def test_the_stream_command_scores_until_sigterm_then_stops_cleanly(trained, broker, tmp_path):
    """``raypipe stream`` in its own process: predictions come back; SIGTERM ends it with exit 0 and its counts."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    spec, storage = trained
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)))
    listener = Listener(broker)
    proc = subprocess.Popen([sys.executable, "-m", "raypipe", "stream", str(path), "--source", broker,
                             "--topics", "plant/+/sensors", "--publish", "plant/{device}/predictions",
                             "--batch-seconds", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pub = Publisher(broker, "rp-cli-pub")
    try:
        messages = sensor_messages(machines=5, per_machine=2, seed=11)
        deadline = time.monotonic() + 60
        # the command subscribes after it starts: publish one message until its answer comes back
        while not listener.got and time.monotonic() < deadline and proc.poll() is None:
            pub.publish(f"plant/{messages[0]['machine_id']}/sensors", json.dumps(messages[0]), qos=0)
            time.sleep(0.3)
        warmup = len(listener.got)
        for m in messages[1:]:
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: len(listener.got) >= warmup + len(messages) - 1, "the command's predictions")
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
    finally:
        pub.close()
        listener.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errs
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["scored"] == counts["published"] == counts["received"] >= len(messages)
    assert counts["quarantined"] == 0


def test_a_restarted_scorer_answers_what_arrived_while_it_was_stopped(trained, broker):
    """The persistent session keeps the subscription: messages published while no scorer runs are queued by
    the broker and answered by the next scorer with the same client id; acknowledged ones do not come again."""
    from raypipe.serve.stream import StreamScorer

    spec, _ = trained
    first = StreamScorer(spec, broker, ["plant/+/sensors"], batch_seconds=0.05)
    first.start()
    assert first.subscribed.wait(30)
    pub = Publisher(broker, "rp-restart-pub")
    messages = sensor_messages(machines=5, per_machine=2, seed=13)
    try:
        pub.publish(f"plant/{messages[0]['machine_id']}/sensors", json.dumps(messages[0]))
        wait_for(lambda: first.counts["scored"] == 1, "the first answer")
        first.stop()
        for m in messages[1:]:
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        second = StreamScorer(spec, broker, ["plant/+/sensors"], batch_seconds=0.05)
        second.start()
        wait_for(lambda: second.counts["scored"] == len(messages) - 1, "the queued messages' answers")
        assert second.subscribed.wait(30)
        counts = second.stop()
    finally:
        pub.close()
    assert counts["received"] == counts["scored"] == len(messages) - 1  # the first one was not delivered again


def test_a_prediction_topic_the_subscription_would_deliver_back_is_refused():
    from raypipe.errors import SpecError
    from raypipe.serve.stream import check_publish_topic

    check_publish_topic("plant/{device}/predictions", ["plant/+/sensors"])
    check_publish_topic("{topic}/prediction", ["plant/+/sensors"])
    with pytest.raises(SpecError, match=r"--publish '\{topic\}/prediction': a prediction topic such as "
                                        r"'plant/d/prediction' falls under the scored filter 'plant/#'"):
        check_publish_topic("{topic}/prediction", ["plant/#"])
    with pytest.raises(SpecError, match=r"only \{device\} and \{topic\} are filled in"):
        check_publish_topic("{machine}/p", ["plant/+/sensors"])


def test_window_features_are_computed_from_each_device_s_last_readings_like_offline(ray_session, broker,
                                                                                    tmp_path_factory):
    """A champion trained with ``features.windows``: messages carry the readings only, the scorer adds each
    device's windows, and the answers equal the batch Predictor's on the offline window values."""
    import pandas as pd

    import raypipe
    from raypipe.model.features.windows import group_windows
    from raypipe.serve.stream import StreamScorer

    storage = tmp_path_factory.mktemp("stream-windows") / "store"
    windows = {"by": "machine_id", "order": "cycle", "columns": ["vibration_mm_s", "temperature_c"], "size": 4}
    spec = load_spec(small_spec(storage, name="t-stream-w", data={
        "source": {"type": "builtin", "name": "sensors", "rows": 1500, "seed": 3}, "target": "failure_soon",
        "id_columns": ["machine_id"]}, features={"windows": windows}))
    raypipe.run(spec)
    scorer = StreamScorer(spec, broker, ["plant/+/sensors"], publish="plant/{device}/predictions",
                          batch_messages=25, batch_seconds=0.1)
    listener = Listener(broker)
    scorer.start()
    assert scorer.subscribed.wait(30)
    messages = sensor_messages(machines=10, per_machine=8, seed=9)
    assert not any(k.startswith("vibration_mm_s_w4") for k in messages[0])
    pub = Publisher(broker, "rp-stream-w-pub")
    try:
        for m in messages:
            pub.publish(f"plant/{m['machine_id']}/sensors", json.dumps(m))
        wait_for(lambda: len(listener.got) == len(messages), "every prediction")
    finally:
        pub.close()
        counts = scorer.stop()
        listener.close()
    assert counts["quarantined"] == 0 and counts["scored"] == len(messages)
    frame = pd.DataFrame(messages)
    offline = pd.concat([group_windows(g, order="cycle", columns=windows["columns"], size=4,
                                       stats=["mean", "std", "min", "max", "slope"])
                         for _, g in frame.groupby("machine_id")]).loc[frame.index]
    expected = champion_predictor(storage, "t-stream-w").predict_records(offline.to_dict("records"))
    from raypipe.ingest.mqtt_wire import message_id

    order = {message_id(f"plant/{m['machine_id']}/sensors", json.dumps(m).encode(), m, None): i
             for i, m in enumerate(messages)}
    got = sorted(listener.got, key=lambda g: order[g["id"]])
    assert [g["prediction"] for g in got] == [e["prediction"] for e in expected]
    # float32 matrix products differ in the last bits between batch sizes (the stream scored 25 at a time)
    assert [g["scores"] for g in got] == [pytest.approx(e["scores"], abs=1e-6) for e in expected]
    # without the windows (a first reading's alone) most answers would differ: the windows carried information
    alone = champion_predictor(storage, "t-stream-w").predict_records(
        pd.concat([frame, frame[windows["columns"]].rename(columns=lambda c: f"{c}_w4_mean")], axis=1)
        .assign(**{f"{c}_w4_{s}": 0.0 for c in windows["columns"] for s in ("std", "slope")},
                **{f"{c}_w4_{s}": frame[c] for c in windows["columns"] for s in ("min", "max")})
        .to_dict("records"))
    assert [a["scores"] for a in alone] != [e["scores"] for e in expected]
