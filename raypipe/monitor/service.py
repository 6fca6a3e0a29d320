"""``raypipe monitor --serve``: the log's newest window checked every ``monitor.interval_s``, as gauges.

Metrics set by a short task vanish with its worker, so the checks run in one long-lived process:
a Serve application of its own (``<pipeline>-monitor`` at ``<route prefix>/monitor``) beside the
endpoint, one replica whose thread checks ``[now - monitor.window_s, now)`` every
``monitor.interval_s`` (:func:`raypipe.monitor.logwindow.check_log_window`, so each version
against its own reference, the labels joined) and sets ``ray.util.metrics`` gauges that Ray
exports as ``ray_raypipe_*``. Each window's reports are kept under ``<storage>/monitor/<pipeline>/``
as any check's. ``GET <route>/monitor/status`` answers the last check's summary; a check that
raises (a bad window, storage down) is reported there and the loop goes on.

``POST <route>/monitor/alerts`` is Alertmanager's webhook (the route ``raypipe monitor --emit-alertmanager``
writes): each firing alert, once (:mod:`raypipe.monitor.webhook`), goes to :meth:`Monitor.on_alert`;
the status's ``inbox`` counts the posts, ``alerts`` holds what the hook recorded.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
import traceback
from typing import Any, Optional

GAUGES = {
    "feature_drift": ("a feature's drift statistic in the newest window", ("pipeline", "version", "feature", "statistic")),
    "prediction_drift": ("drift of the version's answers (part answer or score)", ("pipeline", "version", "part",
                                                                                  "statistic")),
    "multivariate_drift": ("the domain classifier's ROC-AUC, window rows vs training rows", ("pipeline", "version")),
    "window_rows": ("rows of the newest window the version answered", ("pipeline", "version")),
    "window_invalid_rows": ("rows of the newest window that fail the validate stage's row checks (quarantined)",
                            ("pipeline", "version")),
    "performance": ("the version's metrics in the window: measured with labels, estimated without",
                    ("pipeline", "version", "metric", "kind")),
    "monitor_check_ok": ("1 when the last check ran, 0 when it raised", ("pipeline",)),
}


def gauge_values(summary: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """(gauge, tags, value) of every number a window's summary (:meth:`WindowCheck.summary`) holds."""
    out = []
    p = summary["pipeline"]
    for r in summary["reports"]:
        v = str(r["version"])
        for col, c in r["columns"].items():
            out.append(("feature_drift", {"pipeline": p, "version": v, "feature": col, "statistic": c["statistic"]},
                        float(c["value"])))
        for part, d in ((r.get("prediction_drift") or {}).items()):
            if isinstance(d, dict):
                out.append(("prediction_drift", {"pipeline": p, "version": v, "part": part,
                                                 "statistic": d["statistic"]}, float(d["value"])))
        auc = (r.get("multivariate") or {}).get("auc")
        if auc is not None:
            out.append(("multivariate_drift", {"pipeline": p, "version": v}, float(auc)))
        out.append(("window_rows", {"pipeline": p, "version": v}, float(r["rows"])))
        out.append(("window_invalid_rows", {"pipeline": p, "version": v}, float(r["rows"] - r["valid_rows"])))
        perf = r.get("performance") or {}
        for m, x in (perf.get("metrics") or {}).items():
            if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x:
                out.append(("performance", {"pipeline": p, "version": v, "metric": m, "kind": perf["kind"]}, float(x)))
    return out


class Monitor:
    """The loop and its gauges (no Serve here: :class:`MonitorService` wraps it)."""

    def __init__(self, spec_data: dict[str, Any], *, start: bool = True) -> None:
        from ray.util.metrics import Gauge

        from raypipe.monitor.logwindow import references_for
        from raypipe.registry import Registry
        from raypipe.spec import load_spec

        self.spec = load_spec(spec_data)
        self.references = references_for(self.spec, Registry.for_spec(self.spec))
        self.gauges = {name: Gauge(f"raypipe_{name}", text, tag_keys=keys) for name, (text, keys) in GAUGES.items()}
        self.status: dict[str, Any] = {"pipeline": self.spec.name, "checks": 0, "failures": 0, "state": "starting",
                                       "interval_s": self.spec.monitor.interval_s,
                                       "window_s": self.spec.monitor.window_s}
        from ray.util.metrics import Counter

        from raypipe.store import Store

        self.spec_data = spec_data
        self._retrain_store = Store(self.spec.storage).sub("monitor", self.spec.name, "retrain")
        self.retrains = Counter("raypipe_retrains", "retrains the monitor started, by outcome (promoted, rejected, "
                                "failed, skipped)", tag_keys=("pipeline", "status"))
        self._retraining: Optional[threading.Thread] = None
        self._lock = threading.Lock()  # the check thread and on_alert (request threads) both replace status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raypipe-monitor", daemon=True)
        if start:
            self._thread.start()

    def check_once(self, now: Optional[dt.datetime] = None) -> dict[str, Any]:
        """One check of the newest window; the status after it (a failure is recorded, never raised)."""
        from raypipe.monitor.logwindow import check_log_window

        now = now or dt.datetime.now(dt.timezone.utc)
        start = now - dt.timedelta(seconds=self.spec.monitor.window_s)
        t0 = time.monotonic()
        try:
            check = check_log_window(self.spec, self.references, start, now)
            summary = check.summary()
        except Exception as e:  # noqa: BLE001 - a bad window must not end the loop: it is reported
            tb = traceback.format_exc(limit=5)[-4000:]
            with self._lock:
                self.status = {**self.status, "checks": self.status["checks"] + 1,
                               "failures": self.status["failures"] + 1, "state": "failed",
                               "error": f"{type(e).__name__}: {e}", "traceback": tb,
                               "checked_at": now.isoformat(), "seconds": round(time.monotonic() - t0, 3)}
            self.gauges["monitor_check_ok"].set(0, tags={"pipeline": self.spec.name})
            return self.status
        for name, tags, value in gauge_values(summary):
            self.gauges[name].set(value, tags=tags)
        self.gauges["monitor_check_ok"].set(1, tags={"pipeline": self.spec.name})
        with self._lock:
            self.status = {**{k: v for k, v in self.status.items() if k not in ("error", "traceback")},
                           "checks": self.status["checks"] + 1, "state": "ok", "checked_at": now.isoformat(),
                           "seconds": round(time.monotonic() - t0, 3), "last": summary}
        from raypipe.monitor.retrain import Ledger, Trigger, trigger_of

        if self.spec.monitor.retrain.promote == "canary" and any(
                e.get("status") == "canary" for e in Ledger(self._retrain_store).entries()):
            self.maybe_retrain(Trigger("settle", "the canary's window passed"))  # judged (or still watched)
        else:
            self.maybe_retrain(trigger_of(check, self.spec.monitor.retrain.on))
        return self.status

    # -- the closed loop ------------------------------------------------------------------
    def maybe_retrain(self, trigger: Any) -> bool:
        """Start a retrain for ``trigger`` when ``monitor.retrain.on`` holds its kind and none of this
        monitor's is running; it runs as a Ray task (its outcome lands in ``status["retrain"]``). The
        retrain's own gates (lease, cooldown, daily cap, fresh rows) still apply there."""
        if trigger is None or (trigger.kind not in self.spec.monitor.retrain.on and trigger.kind != "settle"):
            return False
        with self._lock:
            if self._retraining is not None and self._retraining.is_alive():
                self.retrains.inc(1, tags={"pipeline": self.spec.name, "status": "skipped"})
                before = self.status.get("retrain") or {}
                self.status = {**self.status, "retrain": {**before, "last_skipped": {
                    "status": "skipped", "trigger": trigger.reason,
                    "reason": "a retrain this monitor started is still running"}}}
                return False
            self._retraining = threading.Thread(target=self._retrain, args=(trigger,), name="raypipe-retrain",
                                                daemon=True)
            self.status = {**self.status, "retrain": {**(self.status.get("retrain") or {}), "running": True,
                                                      "started_for": trigger.reason}}
            self._retraining.start()
        return True

    def _retrain(self, trigger: Any) -> None:
        import ray

        try:
            task = ray.remote(num_cpus=0, max_retries=0)(_retrain_task)
            outcome = ray.get(task.remote(self.spec_data, trigger.kind, trigger.reason))
        except Exception as e:  # noqa: BLE001 - recorded; the retrain's cooldown keeps it from looping
            outcome = {"status": "failed", "trigger": trigger.reason, "reason": f"{type(e).__name__}: {e}"}
        if outcome["status"] == "watching":  # a canary not judged yet: not an outcome to count
            with self._lock:
                before = self.status.get("retrain") or {}
                self.status = {**self.status, "retrain": {**before, "running": False, "canary": outcome}}
            return
        self._note_retrain(outcome)

    def _note_retrain(self, outcome: dict[str, Any]) -> None:
        """A finished retrain: ``status["retrain"]`` gets it as ``last``, and its count by outcome."""
        self.retrains.inc(1, tags={"pipeline": self.spec.name, "status": outcome["status"]})
        with self._lock:
            before = self.status.get("retrain") or {}
            counts = dict(before.get("counts") or {})
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
            self.status = {**self.status, "retrain": {**before, "running": False, "last": outcome, "counts": counts}}

    def on_alert(self, alerts: list[dict[str, Any]]) -> None:
        """The hook for firing alerts from Alertmanager (each once; see :mod:`raypipe.monitor.webhook`).

        Records them in ``status["alerts"]`` (``received``: how many so far, ``last``: the newest 20,
        each with ``received_at``). A retrain on alerts (``monitor.retrain``) starts from here; an
        exception makes the webhook answer 500 and Alertmanager post the alerts again.
        """
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        with self._lock:
            before = self.status.get("alerts") or {"received": 0, "last": []}
            last = (before["last"] + [{**a, "received_at": now} for a in alerts])[-20:]
            self.status = {**self.status, "alerts": {"received": before["received"] + len(alerts), "last": last}}
        if alerts and "alert" in self.spec.monitor.retrain.on:
            from raypipe.monitor.retrain import Trigger

            self.maybe_retrain(Trigger("alert", alert_reason(alerts)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.spec.monitor.interval_s)

    def stop(self) -> None:
        self._stop.set()


_REASON_LABELS = ("feature", "part", "metric", "kind", "statistic", "version", "status_code")  # the rules' own labels


def alert_reason(alerts: list[dict[str, Any]]) -> str:
    """One sentence for the alerts of a post: the first one's name, labels and summary, and how many more."""
    first = alerts[0]
    labels = first.get("labels") or {}
    detail = ", ".join(f"{k}={labels[k]}" for k in _REASON_LABELS if k in labels)
    summary = (first.get("annotations") or {}).get("summary", "")
    more = f" (and {len(alerts) - 1} more alert{'s' if len(alerts) > 2 else ''})" if len(alerts) > 1 else ""
    return f"alert {labels.get('alertname', '?')} firing" + (f" ({detail})" if detail else "") + \
        (f": {summary}" if summary else "") + more


def _retrain_task(spec_data: dict[str, Any], kind: str, reason: str) -> dict[str, Any]:
    """A Ray task: one retrain (see :func:`raypipe.monitor.retrain.retrain`), its outcome as a dict."""
    from raypipe.monitor.retrain import Trigger, retrain, settle_canary
    from raypipe.progress import Progress
    from raypipe.spec import load_spec

    spec = load_spec(spec_data)
    if kind == "settle":
        settled = settle_canary(spec)
        return settled.summary() if settled is not None else {"status": "watching", "trigger": reason,
                                                                 "reason": "the canary's window has not passed, "
                                                                           "or it has too few labels yet"}
    return retrain(spec, Trigger(kind, reason), progress=Progress(quiet=True)).summary()


class MonitorService:
    """The Serve deployment: ``GET /status``, ``POST /alerts`` (the API key too when ``deploy.auth`` is on).

    Plain ASGI-request code: it runs in any server that hands it a Starlette request (the tests host
    it in uvicorn, without Ray, with ``start=False``: no check loop).
    """

    def __init__(self, spec_data: dict[str, Any], api_key_hash: Optional[str] = None, *, start: bool = True) -> None:
        from raypipe.apikey import KeyCheck
        from raypipe.monitor.webhook import AlertInbox

        self.key_check = KeyCheck(api_key_hash) if api_key_hash else None
        self.monitor = Monitor(spec_data, start=start)
        self.inbox = AlertInbox()

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if self.key_check is not None:
            auth = request.headers.get("authorization", "")
            key = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
            if not self.key_check(key):
                return JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>' or "
                                              "'X-API-Key: <key>'"}, status_code=401)
        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and path in ("status", "healthz"):
            return JSONResponse({**self.monitor.status, "inbox": self.inbox.summary()} if path == "status"
                                else {"ok": True})
        if request.method == "POST" and path == "alerts":
            return await self._alerts(request)
        return JSONResponse({"error": f"no such route {request.method} {request.url.path}; "
                                      "GET <route>/monitor/status answers the last check, "
                                      "POST <route>/monitor/alerts takes Alertmanager's webhook"}, status_code=404)

    async def _alerts(self, request: Any) -> Any:
        import asyncio

        from starlette.responses import JSONResponse

        from raypipe.monitor.webhook import handle_post

        limit = self.monitor.spec.deploy.max_body_bytes
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                self.inbox.bad_post()
                return JSONResponse({"error": f"body over deploy.max_body_bytes ({limit})"}, status_code=413)
        # the hook may block (a retrain starting): off the event loop
        code, answer = await asyncio.get_running_loop().run_in_executor(
            None, handle_post, self.inbox, body, self.monitor.on_alert)
        return JSONResponse(answer, status_code=code)

    def __del__(self) -> None:
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.stop()


def deploy_monitor(spec: Any, api_key_hash: Optional[str], http_options: dict[str, Any],
                   logging_config: Any = None) -> str:
    """Run the monitor as Serve application ``<pipeline>-monitor``; returns its URL (``.../monitor``)."""
    from ray import serve

    serve.start(http_options=http_options, logging_config=logging_config)
    app = serve.deployment(MonitorService, name="Monitor", num_replicas=1, max_ongoing_requests=8,
                           ray_actor_options={"num_cpus": 0}).bind(spec.model_dump(mode="json", by_alias=True),
                                                                    api_key_hash)
    prefix = f"{spec.route_prefix.rstrip('/')}/monitor"
    serve.run(app, name=f"{spec.name}-monitor", route_prefix=prefix, blocking=False)
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", None) else http.host
    return f"http://{host}:{int(http.port)}{prefix}"
