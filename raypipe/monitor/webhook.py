"""The monitor's Alertmanager webhook, ``POST <route>/monitor/alerts``: parsing and de-duplication.

Alertmanager posts a group's alerts as JSON (webhook payload version 4) and posts them again every
``group_interval`` while the group changes and every ``repeat_interval`` while it fires, and retries
a post that failed. :class:`AlertInbox` hands on each firing alert once: it is known by
(``groupKey``, ``fingerprint``, ``startsAt``), so a repeat of the same firing is a duplicate while
the same alert firing again after it resolved (a new ``startsAt``) is new. Resolved alerts are
counted and never handed on. :func:`handle_post` is the whole HTTP contract, without Serve:

- 200 ``{"accepted": n, "duplicates": n, "resolved": n}``; the accepted alerts went to the hook;
- 400 ``{"error": reason}``: not JSON, not an object, ``version`` not "4", ``alerts`` not a list of
  objects each with ``status``, ``labels`` and ``fingerprint``;
- 500 when the hook raised: the alerts are forgotten again, so Alertmanager's retry hands them on.
"""
from __future__ import annotations

import collections
import json
import threading
from typing import Any, Callable

VERSION = "4"


class BadAlertPayload(ValueError):
    """A post that is not an Alertmanager webhook payload (version 4)."""


def _alert(payload: dict[str, Any], a: Any, i: int) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise BadAlertPayload(f"alerts[{i}] is not an object")
    for key, kind in (("status", str), ("labels", dict), ("fingerprint", str)):
        if not isinstance(a.get(key), kind):
            raise BadAlertPayload(f"alerts[{i}].{key} is missing or not a {'string' if kind is str else 'object'}")
    return {"alertname": a["labels"].get("alertname", ""), "status": a["status"], "labels": a["labels"],
            "annotations": a.get("annotations") or {}, "startsAt": str(a.get("startsAt", "")),
            "fingerprint": a["fingerprint"], "groupKey": str(payload.get("groupKey", "")),
            "generatorURL": a.get("generatorURL", "")}


class AlertInbox:
    """Firing alerts, each handed on once; counts of what came in. Thread-safe."""

    def __init__(self, remember: int = 10_000, keep_last: int = 20) -> None:
        self._seen: collections.OrderedDict[tuple[str, str, str], None] = collections.OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()
        self.last: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_last)
        self.counts = {"posts": 0, "bad_posts": 0, "alerts": 0, "accepted": 0, "duplicates": 0, "resolved": 0}

    @staticmethod
    def key(alert: dict[str, Any]) -> tuple[str, str, str]:
        return alert["groupKey"], alert["fingerprint"], alert["startsAt"]

    def receive(self, payload: Any) -> list[dict[str, Any]]:
        """The firing alerts of ``payload`` not seen before (each: alertname, status, labels,
        annotations, startsAt, fingerprint, groupKey, generatorURL). Raises :class:`BadAlertPayload`."""
        return self.sort(payload)["accepted"]

    def bad_post(self) -> None:
        with self._lock:
            self.counts["bad_posts"] += 1

    def sort(self, payload: Any) -> dict[str, Any]:
        """:meth:`receive`'s work: ``{"accepted": [...], "duplicates": n, "resolved": n}`` of this post."""
        try:
            if not isinstance(payload, dict):
                raise BadAlertPayload("the body is not a JSON object")
            if str(payload.get("version")) != VERSION:
                raise BadAlertPayload(f"version {payload.get('version')!r}: only Alertmanager's webhook "
                                      f"payload version {VERSION!r} is understood")
            if not isinstance(payload.get("alerts"), list):
                raise BadAlertPayload("alerts is missing or not a list")
            alerts = [_alert(payload, a, i) for i, a in enumerate(payload["alerts"])]
        except BadAlertPayload:
            self.bad_post()
            raise
        accepted, duplicates, resolved = [], 0, 0
        with self._lock:
            self.counts["posts"] += 1
            self.counts["alerts"] += len(alerts)
            for a in alerts:
                if a["status"] != "firing":
                    resolved += 1
                elif self.key(a) in self._seen:
                    duplicates += 1
                else:
                    self._seen[self.key(a)] = None
                    accepted.append(a)
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            self.counts["accepted"] += len(accepted)
            self.counts["duplicates"] += duplicates
            self.counts["resolved"] += resolved
            self.last.extend(accepted)
        return {"accepted": accepted, "duplicates": duplicates, "resolved": resolved}

    def forget(self, alerts: list[dict[str, Any]]) -> None:
        """Un-see ``alerts`` (their hand-over failed: a retry is new again)."""
        with self._lock:
            keys = {self.key(a) for a in alerts}
            for k in keys:
                self._seen.pop(k, None)
            kept = [a for a in self.last if self.key(a) not in keys]
            self.last.clear()
            self.last.extend(kept)
            self.counts["accepted"] -= len(alerts)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "last": list(self.last)}


def handle_post(inbox: AlertInbox, body: bytes, hook: Callable[[list[dict[str, Any]]], Any]) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of one webhook post; ``hook`` gets the accepted alerts (if any)."""
    try:
        payload = json.loads(body)
    except ValueError as e:
        inbox.bad_post()
        return 400, {"error": f"the body is not JSON: {e}"}
    try:
        result = inbox.sort(payload)
    except BadAlertPayload as e:
        return 400, {"error": str(e)}
    accepted = result["accepted"]
    if accepted:
        try:
            hook(accepted)
        except Exception as e:  # noqa: BLE001 - answered as a 500, so Alertmanager retries
            inbox.forget(accepted)
            return 500, {"error": f"the alerts could not be handed on: {type(e).__name__}: {e}"}
    return 200, {**result, "accepted": len(accepted)}
