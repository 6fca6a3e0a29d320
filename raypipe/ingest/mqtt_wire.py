"""MQTT on the wire: the client, message ids, and checking a payload against the columns.

Shared by the ingest actor (:mod:`raypipe.ingest.mqtt`) and the stream scorer
(:mod:`raypipe.serve.stream`), so both land and score the same rows and quarantine the same
messages. The broker's user name and password are read from the environment variables the
spec names, here, in the process that connects; they are never stored or logged.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from raypipe.errors import SpecError

# The column types a message may carry (raypipe.schema's names), and the JSON values each accepts.
TYPES = ("number", "integer", "boolean", "string", "text", "datetime")
META_COLUMNS = ("__msg_id", "__topic", "__arrived")  # landed with every row, never features


def broker_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``mqtt://host:port`` (default port 1883) or ``mqtts://`` (8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SpecError(f"broker {url!r}: write mqtt://host:1883 (or mqtts://host:8883 for TLS)")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def credentials(username_env: str | None, password_env: str | None) -> tuple[str | None, str | None]:
    """The user name and password from the environment variables named (read here, never stored)."""
    values = []
    for field, name in (("username_env", username_env), ("password_env", password_env)):
        if name is None:
            values.append(None)
            continue
        value = os.environ.get(name)
        if not value:
            raise SpecError(f"data.source.{field}: the environment variable {name!r} is not set (or empty); export "
                            f"it where the MQTT client runs, or remove {field}")
        values.append(value)
    return values[0], values[1]


def make_client(client_id: str, *, persistent: bool, manual_ack: bool, username: str | None = None,
                password: str | None = None, tls: bool = False) -> Any:
    """A paho-mqtt 2.x client (MQTT 3.1.1). ``persistent``: clean session off, so the broker keeps the
    subscriptions and queues QoS 1/2 messages while the client is away; ``manual_ack``: a message
    is acknowledged only when the caller calls ``client.ack(mid, qos)``."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=not persistent, protocol=mqtt.MQTTv311)
    client.manual_ack_set(manual_ack)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    return client


def subscribe_on_connect(client: Any, topics: Iterable[str], qos: int, on_subscribed: Callable[[], None]) -> None:
    """(Re)subscribe to ``topics`` on every connection, and call ``on_subscribed`` once the broker grants them."""
    topics = list(topics)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(t, qos) for t in topics])

    def on_subscribe(c: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        on_subscribed()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe


class Delivery(NamedTuple):
    """One message as delivered: ``at`` is its arrival (``time.time()``), ``connection`` the connection's number."""

    topic: str
    payload: bytes
    at: float
    mid: int
    qos: int
    connection: int


class Inbox:
    """What a manual-ack session delivered, held until its micro-batch is done, and acknowledged then.

    It becomes ``client``'s message handler and counts the client's connections (around the
    handler :func:`subscribe_on_connect` set; ``on_connect`` is told each connection's reason).
    Packet ids are per connection, so :meth:`ack` acknowledges only what the current connection
    delivered: a message from an earlier one may share its id with another message now, and the
    broker delivers it again on this connection.
    """

    def __init__(self, client: Any, on_connect: Callable[[Any], None] | None = None) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.pending: list[Delivery] = []
        self.connection = 0
        self.received = 0
        inner = client.on_connect

        def connected(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
            with self.lock:
                self.connection += 1
            if on_connect is not None:
                on_connect(reason)
            inner(c, u, f, reason, p)

        client.on_connect = connected
        client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.pending.append(Delivery(msg.topic, bytes(msg.payload), time.time(), msg.mid, msg.qos, self.connection))
            self.received += 1

    def __len__(self) -> int:
        with self.lock:
            return len(self.pending)

    def take(self, most: int, wait_s: float, force: bool = False) -> list[Delivery]:
        """The oldest ``most`` messages once that many wait or the oldest has waited ``wait_s`` (any that wait
        with ``force``); none otherwise."""
        with self.lock:
            due = bool(self.pending) and (force or len(self.pending) >= most or time.time() - self.pending[0].at >= wait_s)
            batch = self.pending[:most] if due else []
            del self.pending[: len(batch)]
        return batch

    def put_back(self, batch: list[Delivery]) -> None:
        """Messages whose batch failed: first in line again, still unacknowledged."""
        with self.lock:
            self.pending[:0] = batch

    def ack(self, batch: list[Delivery]) -> None:
        with self.lock:
            current = self.connection
        for d in batch:
            if d.qos > 0 and d.connection == current:
                self.client.ack(d.mid, d.qos)


def message_id(topic: str, payload: bytes, obj: Any, id_field: str | None) -> str:
    """A message's id: its payload's ``id_field`` when it has one, else a hash of topic and payload.

    A broker redelivers a message with the same payload, so either id finds it landed before.
    """
    if id_field is not None and isinstance(obj, dict) and obj.get(id_field) is not None:
        return f"id:{obj[id_field]}"
    return "h:" + hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def decode(payload: bytes) -> tuple[Any, str | None]:
    """``(the JSON object, None)`` or ``(None, why it is not one)``."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"not JSON: {str(e)[:120]}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: a {type(obj).__name__}"
    return obj, None


def json_type(value: Any) -> str | None:
    """The column type a JSON value suggests (None for null, a list or an object)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def infer_columns(objects: list[dict[str, Any]], required: Iterable[str] = ()) -> dict[str, str]:
    """Column types from the first good micro-batch: each column by the majority of its values' types
    (integers and floats together are ``number``). Columns with no typed value are left out."""
    votes: dict[str, dict[str, int]] = {}
    for obj in objects:
        for key, value in obj.items():
            t = json_type(value)
            if t is not None:
                votes.setdefault(key, {}).setdefault(t, 0)
                votes[key][t] += 1
    columns = {}
    for key, counts in votes.items():
        numeric = counts.get("integer", 0) + counts.get("number", 0)
        best = max(counts, key=counts.__getitem__)
        if numeric >= counts[best] and numeric:
            best = "number" if counts.get("number") else "integer"
        columns[key] = best
    missing = [c for c in required if c not in columns]
    if missing:
        raise SpecError(f"the first micro-batch has no typed value for {missing}; give the columns in a schema "
                        "file (validate.schema) or publish messages that carry them")
    return columns


def check_row(obj: dict[str, Any], columns: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """``(the row, None)`` with the ``columns`` only (an int in a number column becomes a float), or
    ``(None, the reason)``: a missing column, or a value of the wrong type (null is a missing value)."""
    row: dict[str, Any] = {}
    for name, typ in columns.items():
        if name not in obj:
            return None, f"missing column {name!r}"
        value = obj[name]
        if value is None:
            row[name] = None
            continue
        ok = _accepts(typ, value)
        if not ok:
            return None, f"column {name!r}: {type(value).__name__} {_short(value)} is not {typ}"
        row[name] = float(value) if typ == "number" else value
    return row, None


def _accepts(typ: str, value: Any) -> bool:
    if typ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)  # string, text, datetime (as sent)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
