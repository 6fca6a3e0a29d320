"""Start a throwaway Mosquitto broker for tests (no system service), and publish to it.

The broker runs from Debian's binary on 127.0.0.1 and a free port, with a config file in the
temp dir and persistence on: stopped with SIGTERM it saves its state (persistent sessions,
their subscriptions and queued QoS 1 messages) and a restart on the same port loads it.
Queues are unbounded and in-flight messages are not capped at 20, as
:mod:`raypipe.ingest.mqtt` asks of a broker.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class MosquittoMissing(RuntimeError):
    """The mosquitto binary is not installed."""


def _config(tmp: Path, port: int) -> Path:
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {tmp}/\n"
        "autosave_interval 1\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 0\n"
        f"log_dest file {tmp}/mosquitto.log\n"
    )
    return conf


def _wait_listening(port: int, proc: subprocess.Popen, tmp: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited ({proc.returncode}):\n{_tail(tmp / 'mosquitto.log')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}:\n{_tail(tmp / 'mosquitto.log')}")


def start_mosquitto(tmp_dir: str | Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """Start a broker in ``tmp_dir``; returns ``(url, stop, restart)``.

    ``restart`` stops the broker (SIGTERM: it saves its state) and starts it again on the same
    port; ``stop`` stops it for good. Both only signal the process this function started.
    """
    if not os.path.exists(MOSQUITTO):
        raise MosquittoMissing("mosquitto not found (/usr/sbin/mosquitto); `make test` installs it "
                               "(scripts/test-deps.sh); locally run: apt-get install -y mosquitto")
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(tmp, "mosquitto", "mosquitto")  # as root, mosquitto drops to its own user
    port = free_port()
    conf = _config(tmp, port)
    procs: list[subprocess.Popen] = []

    def start() -> None:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_listening(port, proc, tmp)

    def stop_process() -> None:
        proc = procs[-1]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)

    def restart() -> None:
        stop_process()
        start()

    def stop() -> None:
        stop_process()
        shutil.rmtree(tmp, ignore_errors=True)

    start()
    return f"mqtt://127.0.0.1:{port}", stop, restart


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no broker log)"


class Publisher:
    """A QoS-1 publisher that survives a broker restart: ``publish`` returns once the broker has the message."""

    def __init__(self, url: str, client_id: str = "rp-test-publisher") -> None:
        import paho.mqtt.client as mqtt

        from raypipe.ingest.mqtt_wire import broker_address

        host, port, _ = broker_address(url)
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.published = 0

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        while True:  # while the broker restarts, paho refuses new messages: wait and try again
            info = self.client.publish(topic, payload, qos=qos)
            if info.rc == 0:
                break
            time.sleep(0.2)
        info.wait_for_publish(timeout=60)
        if not info.is_published():
            raise RuntimeError(f"the broker did not acknowledge a message to {topic} in 60 s")
        self.published += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sensor_messages(machines: int = 50, per_machine: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of the built-in ``sensors`` set for ``machines`` machines, ``per_machine`` each (every 10th cycle
    of each, in cycle order, so the failing last cycles are among them), interleaved machine by machine."""
    from raypipe.ingest.builtin.sensors import generate_sensors

    df = generate_sensors(rows=machines * 260, seed=seed)
    picked = []
    for _, g in list(df.groupby("machine_id", sort=True))[:machines]:
        g = g.iloc[::-1].iloc[:: max(1, len(g) // per_machine)].iloc[:per_machine].iloc[::-1]  # last cycle included
        picked.append(g.to_dict("records"))
    out = []
    for k in range(per_machine):
        out += [rows[k] for rows in picked if k < len(rows)]
    return [{key: (v.item() if hasattr(v, "item") else v) for key, v in r.items()} for r in out]
