"""The MQTT source: a detached Ray actor lands messages as parquet; a run reads a window of them.

The actor (:class:`MqttIngest`, one per pipeline and landing folder, started by
:func:`start_ingest` or ``raypipe ingest-stream SPEC``) subscribes with a persistent session
(a fixed client id, clean session off) and acknowledges messages by hand: a micro-batch is
written and fsynced to the landing folder (:mod:`raypipe.ingest.landing`) before any of its
messages is acknowledged. So a message the broker handed over is either in a file or still
the broker's to deliver again, whatever stops the actor or the broker; a message delivered
again is recognised by its id (:func:`raypipe.ingest.mqtt_wire.message_id`) and not landed
twice. Each message is checked against the columns (the ``validate.schema`` file's, else
inferred from the first good micro-batch and then held): one that is not a JSON object,
lacks a column or holds a value of the wrong type is quarantined with the reason, and
counted. Ray restarts a killed actor (``max_restarts=-1``); it rebuilds the landed ids from
the files and reconnects to the same session.

The broker must keep what it holds for an absent client: with Mosquitto, ``persistence
true``, and ``max_queued_messages 0`` / ``max_inflight_messages`` at least
``batch_messages`` (its defaults, 1000 and 20, drop queued messages past 1000 and hold a
micro-batch at 20 unacknowledged messages until ``batch_seconds``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from raypipe.errors import DataValidationError, SpecError
from raypipe.ingest.landing import Landing, window_fingerprint
from raypipe.ingest.mqtt_wire import (
    META_COLUMNS, TYPES, Delivery, Inbox, broker_address, check_row, credentials, decode, infer_columns, make_client,
    message_id, subscribe_on_connect,
)
from raypipe.spec import MqttSource

if TYPE_CHECKING:
    import ray.data

    from raypipe.spec import Spec

log = logging.getLogger("raypipe.ingest.mqtt")
NAMESPACE = "raypipe"


class MqttIngest:
    """Subscribe, check, land, then acknowledge. Run as a Ray actor; plain Python otherwise.

    Args:
        source: the ``data.source`` section.
        client_id: the persistent session's id.
        columns: column -> type to check rows against; None: inferred from the first good micro-batch.
        required: columns an inferred schema must hold (the target and id columns): only messages that hold
            them type the columns, and one without them is quarantined.

    The broker's credentials are read from the variables ``source.username_env`` / ``password_env``
    name, in this process.
    """

    def __init__(self, source: MqttSource, client_id: str, columns: dict[str, str] | None = None,
                 required: tuple[str, ...] = ()) -> None:
        self.source, self.client_id, self.required = source, client_id, tuple(required)
        self.landing = Landing(source.landing)
        self.landing.remove_temporary()
        self.seen = self.landing.seen_ids()
        held = self.landing.read_columns()
        if columns is not None and held is not None and held != columns:
            raise SpecError(f"data.source.landing {source.landing!r} holds rows of other columns ({held}) than "
                            f"validate.schema gives ({columns}); land into a new folder")
        self.columns = columns or held
        self.counts = {"received": 0, "landed": 0, "quarantined": 0, "duplicates": 0, "batches": 0,
                       "already_landed": len(self.seen)}
        self.state = {"connected": False, "subscribed": False, "last_error": None}
        self._lock, self._stop = threading.Lock(), threading.Event()
        host, port, tls = broker_address(source.broker)
        username, password = credentials(source.username_env, source.password_env)
        self.client = make_client(client_id, persistent=True, manual_ack=True, username=username,
                                  password=password, tls=tls)
        subscribe_on_connect(self.client, source.topics, source.qos, lambda: self.state.update(subscribed=True))
        self.inbox = Inbox(self.client, lambda reason: self.state.update(connected=not reason.is_failure))
        self.client.on_disconnect = lambda *a: self.state.update(connected=False)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, name="mqtt-landing", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(0.05):
            self.flush(force=False)

    def flush(self, force: bool = True) -> dict[str, int]:
        """Land what is pending now (without ``force``: once a micro-batch is due), then acknowledge it. A failed
        write acknowledges nothing (the broker keeps the messages) and is retried at the next flush."""
        batch = self.inbox.take(self.source.batch_messages, self.source.batch_seconds, force=force)
        if not batch:
            return self._counts()
        try:
            landed, quarantined, dups = self._land(batch)
        except Exception as e:  # noqa: BLE001 - a full disk, a lost mount: the messages stay unacknowledged
            log.exception("mqtt ingest: a micro-batch of %d messages could not be landed", len(batch))
            self.state["last_error"] = f"{type(e).__name__}: {e}"
            self.inbox.put_back(batch)
            time.sleep(1.0)
            return self._counts()
        self.inbox.ack(batch)  # one from an earlier connection comes again on this one: a duplicate, acked then
        with self._lock:
            self.counts["landed"] += landed
            self.counts["quarantined"] += quarantined
            self.counts["duplicates"] += dups
            self.counts["batches"] += 1
        return self._counts()

    def _counts(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "received": self.inbox.received}

    def _land(self, batch: list[Delivery]) -> tuple[int, int, int]:
        arrived_ms = int(batch[-1].at * 1000)
        fresh, ids, dups = [], set(), 0
        for topic, payload, *_ in batch:
            obj, why = decode(payload)
            mid = message_id(topic, payload, obj, self.source.id_field)
            if mid in self.seen or mid in ids:
                dups += 1
                continue
            ids.add(mid)
            fresh.append((mid, topic, payload, obj, why))
        if self.columns is None:  # the first good micro-batch: rows that hold the target and id columns
            good = [obj for *_, obj, why in fresh if why is None and all(c in obj for c in self.required)]
            if good:
                self.columns = infer_columns(good, self.required)
                self.landing.write_columns(self.columns)
        rows, bad = [], []
        for mid, topic, payload, obj, why in fresh:
            row = None
            if why is None and self.columns is not None:
                row, why = check_row(obj, self.columns)
            elif why is None:  # no message so far held every required column
                why = f"missing column(s) {[c for c in self.required if c not in obj]}"
            if row is not None:
                rows.append((mid, topic, row))
            else:
                bad.append((mid, topic, payload, why))
        if rows:
            self.landing.write_batch([r for *_, r in rows], self.columns, [m for m, *_ in rows],
                                     [t for _, t, _ in rows], arrived_ms)
        if bad:
            self.landing.write_quarantine([b[0] for b in bad], [b[1] for b in bad], [b[2] for b in bad],
                                          [b[3] for b in bad], arrived_ms)
        self.seen.update(ids)
        return len(rows), len(bad), dups

    def status(self) -> dict[str, Any]:
        """Counts (received, landed, quarantined, duplicates, batches), pending messages, connection state."""
        return {**self._counts(), "pending": len(self.inbox), **self.state, "columns": self.columns,
                "client_id": self.client_id, "landing": self.source.landing}

    def stop(self) -> dict[str, Any]:
        """Land what is pending, acknowledge it, and disconnect (the session and its subscriptions stay)."""
        self._stop.set()
        self._flusher.join(timeout=10)
        for _ in range(3):  # a write that keeps failing leaves the rest unacknowledged: the broker still has them
            if not len(self.inbox):
                break
            self.flush()
        self.client.disconnect()
        self.client.loop_stop()
        return self.status()


# --- the actor -------------------------------------------------------------------------
def _source(spec: Spec) -> MqttSource:
    if not isinstance(spec.data.source, MqttSource):
        raise SpecError(f"data.source.type is {spec.data.source.type if spec.data.source else None!r}, not mqtt: "
                        "only an mqtt source lands a stream")
    return spec.data.source


def actor_name(spec: Spec) -> str:
    """One ingest actor per pipeline and landing folder."""
    return f"raypipe-mqtt-{spec.name}-{hashlib.sha256(_source(spec).landing.encode()).hexdigest()[:8]}"


def schema_columns(spec: Spec) -> dict[str, str] | None:
    """Column -> type from the ``validate.schema`` file (None with ``schema: infer``)."""
    path = spec.validate_.schema_
    if path == "infer":
        return None
    with open(path) as f:
        columns = {name: col["type"] for name, col in json.load(f)["columns"].items()}
    wrong = {c: t for c, t in columns.items() if t not in TYPES}
    if wrong:
        raise SpecError(f"validate.schema {path!r}: columns {wrong} have types an MQTT message cannot carry; "
                        f"use {list(TYPES)}")
    return columns


def start_ingest(spec: Spec, address: str | None = None) -> Any:
    """Start (or find) the pipeline's detached ingest actor; its handle, once it is subscribed or trying to connect.

    The actor outlives this process and restarts when it dies; :func:`stop_ingest` ends it.
    The broker's credentials travel to it as environment variables of its runtime env, read
    from this process's environment (never written to a file or the log).
    """
    import ray

    from raypipe.runtime import connect_for

    source = _source(spec)
    names = [n for n in (source.username_env, source.password_env) if n]
    credentials(source.username_env, source.password_env)  # a missing variable fails here, before Ray work
    connect_for(spec, address)
    options: dict[str, Any] = {"name": actor_name(spec), "namespace": NAMESPACE, "lifetime": "detached",
                               "max_restarts": -1, "max_task_retries": -1, "num_cpus": 0, "get_if_exists": True}
    if names:
        options["runtime_env"] = {"env_vars": {n: os.environ[n] for n in names}}
    required = tuple(c for c in [spec.data.target, *spec.data.id_columns] if c)
    actor = ray.remote(MqttIngest).options(**options).remote(
        source, source.client_id or f"raypipe-{spec.name}", schema_columns(spec), required)
    ray.get(actor.status.remote())  # raises here if the actor cannot start (a bad broker URL, a wrong schema)
    return actor


def get_ingest(spec: Spec) -> Any:
    """The running ingest actor's handle (connect to Ray first)."""
    import ray

    try:
        return ray.get_actor(actor_name(spec), namespace=NAMESPACE)
    except ValueError:
        raise SpecError(f"no MQTT ingest actor runs for {spec.name!r} (landing {_source(spec).landing}); start it "
                        "with `raypipe ingest-stream SPEC` or raypipe.ingest.mqtt.start_ingest(spec)") from None


def ingest_status(spec: Spec) -> dict[str, Any]:
    import ray

    return ray.get(get_ingest(spec).status.remote())


def stop_ingest(spec: Spec) -> dict[str, Any]:
    """Land what is pending, then end the actor for good; its final status."""
    import ray

    actor = get_ingest(spec)
    final = ray.get(actor.stop.remote())
    ray.kill(actor, no_restart=True)
    return final


# --- reading a window ---------------------------------------------------------------------
def window_files(source: MqttSource) -> list[Any]:
    w = source.window
    return Landing(source.landing).window(seconds=w.seconds, messages=w.messages)


def mqtt_fingerprint(source: MqttSource) -> str:
    """The window's file names and sizes, with the source's settings that shape the rows (not how the actor
    batches, its session id or credential variables: a change there lands the same rows)."""
    params = source.model_dump(mode="json", exclude={"batch_messages", "batch_seconds", "client_id",
                                                     "username_env", "password_env"})
    return hashlib.sha256(json.dumps({"mqtt": params, "window": window_fingerprint(window_files(source))},
                                     sort_keys=True).encode()).hexdigest()


def read_mqtt(source: MqttSource) -> ray.data.Dataset:
    """The window of the landing folder as a ``ray.data.Dataset`` (the landed columns, not the message metadata)."""
    import ray.data

    landing = Landing(source.landing)
    files = window_files(source)
    columns = landing.read_columns()
    landed = landing.files()
    if landed and not files:
        newest = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(landed[-1].arrived_ms / 1000))
        raise DataValidationError([
            f"data.source.window: no micro-batch landed in the last {source.window.seconds:g} s (the newest in "
            f"{source.landing!r} arrived {newest}); is the ingest actor running (`raypipe ingest-stream SPEC "
            "--status`)? Or widen window.seconds, or use window.messages"])
    if not files or columns is None:
        raise DataValidationError([
            f"data.source.landing {source.landing!r} holds no landed messages yet: start the ingest actor "
            f"(`raypipe ingest-stream SPEC`, or raypipe.ingest.mqtt.start_ingest(spec)), let it land messages from "
            f"{source.broker} {source.topics}, then run again"])
    log.info("mqtt source: %d micro-batch file(s) of %s", len(files), source.landing)
    return ray.data.read_parquet([os.path.join(source.landing, f.name) for f in files],
                                 columns=[c for c in columns if c not in META_COLUMNS])
