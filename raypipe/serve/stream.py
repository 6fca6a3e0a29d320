"""Online scoring of an MQTT stream with the champion (``raypipe stream SPEC``).

:class:`StreamScorer` subscribes to topics, gathers messages into micro-batches (by count
or a short time), checks each message against the version's input columns, scores the good
ones through the same :class:`~raypipe.model.predictor.Predictor` batch inference and the
endpoint use, publishes one prediction per message, and writes the batch to the prediction
log (``__source`` ``stream``), so ``raypipe monitor --last 1h`` sees streamed traffic.

- Order: batches are scored one after another and each batch's answers are published in
  arrival order from one client, so a device's predictions keep its messages' order.
- Bad messages (not a JSON object, a missing input column, a value of the wrong type) are
  quarantined with the reason (``<storage>/stream/<pipeline>/_quarantine/``) and counted,
  never scored; the stream goes on.
- Hot swap: the alias is read again every ``check_every_s`` seconds (between batches); when
  it names another version, that version is checked against its manifest, loaded, and
  answers from the next batch on (each answer names its version; the swap is logged).
- At least once: the subscription is a persistent session (client id ``raypipe-stream-<pipeline>``,
  clean session off) and a message is acknowledged only after its answer is published and
  logged (or it is quarantined), so a scorer stopped or killed picks up where it left off;
  a message in flight when it was killed may be answered twice.
- ``prepare`` is called on each batch's rows before scoring. By default it adds the spec's
  ``features.windows`` (:class:`~raypipe.model.features.windows.OnlineWindows`: each
  device's last readings are held, so the values equal the validate stage's offline ones);
  messages carry the readings, never the window columns. The held readings live in the
  scorer: a restarted scorer starts each device's windows afresh.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from raypipe.ingest.landing import Landing
from raypipe.ingest.mqtt_wire import (
    Inbox, broker_address, check_row, credentials, decode, make_client, message_id, subscribe_on_connect,
)
from raypipe.errors import SpecError
from raypipe.predlog import LogFormat, new_request_id, row_ids, write_log
from raypipe.registry import Registry
from raypipe.schema import feature_columns
from raypipe.spec import Spec
from raypipe.store import Store

log = logging.getLogger("raypipe.serve.stream")
_SCHEMA_TYPES = {"number": "number", "integer": "number", "boolean": "boolean", "string": "string",
                 "text": "string", "datetime": "string"}  # an integer input arrives as any JSON number


class StreamScorer:
    """Score an MQTT stream with a registry alias's version, micro-batch by micro-batch.

    Args:
        spec: the pipeline (its registry, storage and ``monitor.log``).
        broker: ``mqtt://host:port``.
        topics: topic filters to score.
        publish: the topic of each prediction; ``{device}`` and ``{topic}`` are filled in
            (default ``{topic}/prediction``).
        key: the message field that names the device (default: the version's first id
            column, else the topic).
        id_field: the payload field that identifies a message (default: a hash of topic and payload).
        alias: the registry alias to score with (``champion``).
        batch_messages, batch_seconds: a micro-batch is scored at this many messages, or when
            its oldest message is this old.
        check_every_s: how often the alias is read again (0: before every batch).
        prepare: called on each batch's rows before scoring; returns the rows to score.
        qos: of the subscription and of the published predictions.
        client_id: the persistent session's id (default ``raypipe-stream-<pipeline>``): one scorer per id.
    """

    def __init__(self, spec: Spec, broker: str, topics: list[str], *, publish: str = "{topic}/prediction",
                 key: str | None = None, id_field: str | None = None, alias: str = "champion",
                 batch_messages: int = 100, batch_seconds: float = 0.2, check_every_s: float = 5.0,
                 prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None, qos: int = 1,
                 client_id: str | None = None, username_env: str | None = None,
                 password_env: str | None = None) -> None:
        from raypipe.model.formats import trusted_factories

        check_publish_topic(publish, topics)
        self.spec, self.topics, self.publish_topic, self.id_field = spec, list(topics), publish, id_field
        self.alias, self.qos = alias, qos
        self.batch_messages, self.batch_seconds, self.check_every_s = batch_messages, batch_seconds, check_every_s
        self.prepare = prepare or _default_prepare(spec)
        self.registry = Registry.for_spec(spec)
        self.trusted = trusted_factories(spec)
        self.predictor: Any = None
        self.version: int | None = None
        self._last_check = 0.0
        self._swap_to(self.registry.resolve(alias=alias))
        self.key = key or (self.schema.get("id_columns") or [None])[0]
        self.quarantine = Landing(Store(spec.storage).full_uri("stream", spec.name))
        self.writer_id = f"stream-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self.counts = {"received": 0, "scored": 0, "quarantined": 0, "published": 0, "batches": 0, "swaps": 0,
                       "log_errors": 0, "failed_batches": 0}
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        host, port, tls = broker_address(broker)
        username, password = credentials(username_env, password_env)
        self.client = make_client(client_id or f"raypipe-stream-{spec.name}", persistent=True, manual_ack=True,
                                  username=username, password=password, tls=tls)
        subscribe_on_connect(self.client, self.topics, qos, self.subscribed.set)
        self.inbox = Inbox(self.client)
        self._address = (host, port)

    # -- the version --------------------------------------------------------------------------
    def _swap_to(self, version: int) -> None:
        from raypipe.model.predictor import Predictor

        pinned = self.registry.check_version(version)  # every file against the manifest before loading
        store = self.registry.version_store(version)
        predictor = Predictor.from_version(store, version, self.trusted, manifest_sha256=pinned)
        if not hasattr(predictor, "predict_records"):
            raise ValueError(f"{self.spec.name} version {version} is a policy: stream scoring takes a predictive model")
        self.schema = store.read_json("schema.json")
        cols = self.schema["columns"]
        derived = {c for c, meta in cols.items() if "window" in meta}  # computed here by `prepare`, not sent
        windows = self.spec.features.windows
        inputs = [c for c in feature_columns(self.schema) if c not in derived]
        inputs += [c for c in [*self.schema.get("id_columns", []), *((windows.by, windows.order) if windows else ())]
                   if c not in inputs and c in cols]
        self.columns = {c: _SCHEMA_TYPES.get(cols[c]["type"], "string") for c in inputs}
        self.log_format = LogFormat(self.schema, self.spec.data.task, self.spec.monitor.log.exclude_columns)
        old, self.predictor, self.version = self.version, predictor, version
        if old is not None:
            self.counts["swaps"] += 1
            log.info("stream %s: %s moved from version %d to %d; version %d answers from now on",
                     self.spec.name, self.alias, old, version, version)
        else:
            log.info("stream %s: version %d (%s) answers", self.spec.name, version, self.alias)

    def _check_alias(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        current = self.registry.alias(self.alias)
        if current is not None and current != self.version:
            try:
                self._swap_to(current)
            except Exception:  # noqa: BLE001 - a version that fails its checks: keep answering with the old one
                log.exception("stream %s: cannot load version %d; version %d keeps answering", self.spec.name,
                              current, self.version)

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Run :meth:`run` in a background thread (its handle)."""
        thread = threading.Thread(target=self.run, name="raypipe-stream", daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def run(self) -> dict[str, int]:
        """Connect, then score micro-batches until :meth:`stop`; what is pending then is scored first."""
        self.client.connect_async(*self._address, keepalive=30)
        self.client.loop_start()
        try:
            while True:
                stopping = self._stop.wait(0.02)
                batch = self.inbox.take(self.batch_messages, self.batch_seconds, force=stopping)
                if batch:
                    self._check_alias()
                    self.score(batch)
                    self.inbox.ack(batch)
                elif stopping:
                    break
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        return self._counts()

    def stop(self, timeout: float = 60.0) -> dict[str, int]:
        """Stop: score what is pending, publish and log it, disconnect."""
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)
        return self._counts()

    def _counts(self) -> dict[str, int]:
        return {**self.counts, "received": self.inbox.received}

    # -- one micro-batch ------------------------------------------------------------------------
    def score(self, batch: list[tuple[Any, ...]]) -> None:
        """Check, score, publish (in arrival order), log; bad messages are quarantined.

        ``batch``: ``(topic, payload, ...)`` per message, in arrival order."""
        good, ids, topics, payloads, bad = [], [], [], [], []
        for topic, payload, *_ in batch:
            obj, why = decode(payload)
            mid = message_id(topic, payload, obj, self.id_field)
            row = None
            if why is None:
                row, why = check_row(obj, self.columns)
            if row is None:
                bad.append((mid, topic, payload, why))
            else:
                good.append(row)
                ids.append(mid)
                topics.append(topic)
                payloads.append(payload)
        if good:
            try:
                self._answer(pd.DataFrame(good, columns=list(self.columns)), ids, topics)
            except Exception as e:  # noqa: BLE001 - the model or `prepare` failed: keep the messages, go on
                log.exception("stream %s: scoring %d messages failed; they are quarantined", self.spec.name, len(good))
                why = f"scoring failed: {type(e).__name__}: {str(e)[:200]}"
                bad += [(m, t, p, why) for m, t, p in zip(ids, topics, payloads)]
                self.counts["failed_batches"] += 1
        if bad:
            self.quarantine.write_quarantine(*map(list, zip(*bad)), arrived_ms=int(time.time() * 1000))
            for mid, topic, _, why in bad:
                log.warning("stream %s: quarantined %s from %s: %s", self.spec.name, mid, topic, why)
        self.counts["quarantined"] += len(bad)
        self.counts["batches"] += 1

    def _answer(self, rows: pd.DataFrame, ids: list[str], topics: list[str]) -> None:
        records = self.predictor.predict_records(self.prepare(rows))
        request_ids = row_ids(new_request_id(), len(records), many=True)
        version = self.version
        infos = []
        for i, answer in enumerate(records):
            device = rows[self.key].iloc[i] if self.key in rows else topics[i]
            out = {"id": ids[i], "device": _plain(device), "topic": topics[i], "request_id": request_ids[i],
                   "version": version, **answer}
            target = self.publish_topic.format(device=device, topic=topics[i])
            infos.append(self.client.publish(target, json.dumps(out, default=_plain), qos=self.qos))
        for info in infos:
            if self.qos > 0:
                info.wait_for_publish(timeout=60)
        self.counts["scored"] += len(records)
        self.counts["published"] += len(infos)
        self._log(rows, records, request_ids, version)

    def _log(self, rows: pd.DataFrame, records: list[dict[str, Any]], request_ids: list[str], version: int) -> None:
        lg = self.spec.monitor.log
        if not lg.enabled:
            return
        keep = np.random.random(len(rows)) < lg.sample_rate if lg.sample_rate < 1.0 else np.ones(len(rows), bool)
        if not keep.any():
            return
        try:
            kept = rows[keep]
            fmt = self.log_format
            inputs = {name: kept[name].tolist() for name, _ in fmt.inputs if name in kept}
            answers = fmt.answers_from_records([r for r, k in zip(records, keep) if k])
            table = fmt.table(inputs, answers, [r for r, k in zip(request_ids, keep) if k], time.time(), version,
                              "champion" if self.alias == "champion" else "challenger", "stream")
            write_log(Store(self.spec.storage), self.spec.name, table, self.writer_id, self.seq)
            self.seq += 1
        except Exception:  # noqa: BLE001 - the predictions are the job; a log that cannot be written is reported
            self.counts["log_errors"] += 1
            log.exception("stream %s: %d rows could not be written to the prediction log", self.spec.name, len(rows))


def _default_prepare(spec: Spec) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The spec's ``features.windows`` from each device's last readings (kept across hot swaps), else nothing."""
    if spec.features.windows is None:
        return lambda df: df
    from raypipe.model.features.windows import OnlineWindows

    return OnlineWindows.from_spec(spec.features.windows).update


def check_publish_topic(publish: str, topics: list[str]) -> None:
    """Refuse a prediction topic that the subscription would deliver back (each answer scored again, for ever).

    Raises:
        SpecError: naming the topic and the filter it falls under.
    """
    import paho.mqtt.client as mqtt

    try:
        samples = [publish.format(device="d", topic=t.replace("+", "d").replace("#", "d")) for t in topics]
    except (KeyError, IndexError, ValueError) as e:
        raise SpecError(f"--publish {publish!r}: only {{device}} and {{topic}} are filled in ({e!r})") from None
    for sample in samples:
        caught = [t for t in topics if mqtt.topic_matches_sub(t, sample)]
        if caught:
            raise SpecError(f"--publish {publish!r}: a prediction topic such as {sample!r} falls under the scored "
                            f"filter {caught[0]!r}, so every answer would be scored again; publish outside it "
                            "(e.g. predictions/{device})")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
