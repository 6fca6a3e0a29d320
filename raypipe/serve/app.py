"""The Ray Serve application: one deployment whose replicas score requests in batches.

Each replica holds the champion's :class:`~raypipe.model.predictor.Predictor` and, with a canary
or shadow, the challenger's. Which versions it holds is the deployment's ``user_config``:
promoting a new champion calls :meth:`ModelServer.reconfigure` on the running replicas,
which load the new version first and then switch in one assignment, so no request fails
and every response after the switch names the new version.

A request goes through, in order (each refusal is a 4xx with a reason, never a 5xx):
API key (401) -> body size (413) -> content type (415) -> JSON and the request model
generated from the stored schema, parsed together by pydantic-core (400 for bad JSON,
422 naming the field) -> dynamic batching (``@serve.batch``), the features and the model
once per batch -> an answer within ``request_timeout_s`` (else 408). Serve itself answers
503 when ``max_queued_requests`` are already waiting.

The FastAPI app is built inside each replica (``__serve_build_asgi_app__``) from the
version's stored schema, so the request model is generated where it is used and never
pickled.
"""

import asyncio
import gc
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from pydantic import TypeAdapter
from ray import serve

from raypipe.predlog import LogFormat, PredictionLogWriter
from raypipe.apikey import KeyCheck
from raypipe.tasks import TASKS
from raypipe.model.predictor import Predictor
from raypipe.serve.request_model import request_model
from raypipe.store import Store


@dataclass(frozen=True)
class Loaded:
    """A registry version held by a replica, with the request model of its stored schema."""

    version: int
    predictor: Predictor
    metadata: dict[str, Any]
    row_model: Any  # the pydantic model of one row (a policy: of the /act body)
    rows: Optional[TypeAdapter[Any]]  # a list of rows (a policy: None)
    log_format: Optional[LogFormat] = None  # how its answers are logged (None: no prediction log)


@dataclass(frozen=True)
class Routing:
    """What a replica serves: swapped as one object, so a request sees one consistent state."""

    champion: Loaded
    challenger: Optional[Loaded] = None
    canary_percent: float = 0.0
    shadow: bool = False


def load_version(uri: str, version: int, pipeline: str, trusted: tuple[str, ...] = (),
                 manifest_sha256: Optional[str] = None, log_exclude: Optional[list[str]] = None) -> Loaded:
    """A registry version as a replica holds it; ``log_exclude``: the prediction log's excluded columns (None: no log)."""
    store = Store(uri)
    predictor = Predictor.from_version(store, version, trusted, manifest_sha256=manifest_sha256)
    if TASKS[predictor.task].policy:  # observations in, actions out: POST /act; no prediction log
        from raypipe.serve.act import act_model

        model = store.read_json("model/model.json")
        metadata = {"pipeline": pipeline, "version": version, "metrics": store.read_json("metrics.json").get("metrics"),
                    "lineage": store.read_json("lineage.json"), "model": model, "route": "/act",
                    "observation_space": model["observation_space"], "action_space": model["action_space"]}
        return Loaded(version, predictor, metadata, act_model(predictor), None, None)
    metadata = {
        "pipeline": pipeline,
        "version": version,
        "metrics": store.read_json("metrics.json").get("metrics"),
        "lineage": store.read_json("lineage.json"),
        "model": store.read_json("model/model.json"),
        "features": predictor.features.feature_names_,
        "threshold": predictor.threshold,
    }
    row = request_model(predictor.schema, name=f"{pipeline.replace('-', '_')}_row")
    fmt = None if log_exclude is None else LogFormat(predictor.schema, predictor.task, log_exclude)
    return Loaded(version, predictor, metadata, row, TypeAdapter(list[row]), fmt)  # type: ignore[valid-type]


class ServeMetrics:
    """raypipe's own Prometheus metrics, exported by Ray as ``ray_raypipe_*``.

    ``ray.serve.metrics`` are ``ray.util.metrics`` that also carry Serve's application,
    deployment and replica tags.
    """

    def __init__(self, pipeline: str) -> None:
        from ray.serve import metrics

        self.predictions = metrics.Counter("raypipe_predictions", "answers given, by version, role and predicted class",
                                           tag_keys=("pipeline", "version", "role", "prediction"))
        self.predictions.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.rejected = metrics.Counter("raypipe_rejected_requests", "requests refused with a 4xx, by reason",
                                        tag_keys=("pipeline", "reason"))
        self.rejected.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.batch_size = metrics.Histogram("raypipe_batch_size", "rows scored per batch",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=("pipeline",))
        self.batch_size.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.version_info = metrics.Gauge("raypipe_model_version_info", "1 for each version a replica serves, by role",
                                          tag_keys=("pipeline", "version", "role"))
        self.version_info.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.shadow_agreement = metrics.Counter("raypipe_shadow_agreement",
                                                "shadow answers equal (agree=true) or not to the champion's",
                                                tag_keys=("pipeline", "version", "agree"))
        self.shadow_agreement.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.log_rows = metrics.Counter("raypipe_prediction_log_rows", "prediction log rows by state: buffered "
                                        "(accepted), written, dropped (buffer full), failed (a write raised)",
                                        tag_keys=("pipeline", "state"))
        self.log_rows.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.log_dropped = metrics.Counter("raypipe_prediction_log_dropped", "prediction log rows dropped: the "
                                           "replica's buffer was full", tag_keys=("pipeline",))
        self.log_dropped.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it
        self.log_held = metrics.Gauge("raypipe_prediction_log_held_rows", "prediction log rows held in memory, "
                                      "not yet written (lost if the replica is killed)", tag_keys=("pipeline",))
        self.log_held.set_default_tags({"pipeline": pipeline})  # a fresh dict: Serve adds its tags to it

    def log_count(self, state: str, rows: int) -> None:
        """The prediction log writer's report (from its thread)."""
        if state == "held":
            self.log_held.set(rows, tags={})
            return
        self.log_rows.inc(rows, tags={"state": state})
        if state == "dropped":
            self.log_dropped.inc(rows, tags={})

    def count(self, loaded: Loaded, role: str, answers: list[dict[str, Any]]) -> None:
        tags = {"version": str(loaded.version), "role": role}
        if TASKS[loaded.predictor.task].scores == "value":  # a value is no class: one series, not one per value
            self.predictions.inc(len(answers), tags={**tags, "prediction": "value"})
            return
        labels = [_label(a) for a in answers]
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        for value, n in zip(values, counts):
            self.predictions.inc(int(n), tags={**tags, "prediction": str(value)})

    def serving(self, old: Optional[Routing], new: Routing) -> None:
        if old is not None:
            for role, loaded in _roles(old):
                self.version_info.set(0, tags={"version": str(loaded.version), "role": role})
        for role, loaded in _roles(new):
            self.version_info.set(1, tags={"version": str(loaded.version), "role": role})


def _label(answer: dict[str, Any]) -> str:
    """What an answer decided, as a metric tag: the class, cluster, anomaly flag or (discrete) action;
    a vector action (a continuous policy) is one series, "vector"."""
    for key in ("prediction", "cluster", "is_anomaly", "action"):
        if key in answer:
            return "vector" if isinstance(answer[key], list) else str(answer[key])
    return "none"


# One request as the batch method takes it: (goes to the canary?, rows, request id when its
# rows are logged else None, the body was a list).
Request = tuple[bool, list[dict[str, Any]], Optional[str], bool]


def _replica_id() -> str:
    """This replica's id in file names: Serve's replica id, and a random part for a restarted one."""
    import uuid

    try:
        rid = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (a test building the class directly)
        rid = "local"
    return f"{rid}-{uuid.uuid4().hex[:6]}"


def _roles(r: Routing) -> list[tuple[str, Loaded]]:
    return [("champion", r.champion)] + ([("challenger", r.challenger)] if r.challenger else [])


class ModelServer:
    """One replica.

    Args:
        pipeline: the pipeline name (for /metadata and metric tags).
        max_batch_size, batch_wait_timeout_s: dynamic batching settings.
        request_timeout_s: a prediction not answered by then gets a 408.
        max_body_bytes: larger bodies get a 413.
        api_key_hash: the API key's salted scrypt hash (:mod:`raypipe.apikey`), or None
            for no auth. The key itself never leaves the process that deployed the app.
        trusted_factories: the ``torch:<module>:<factory>`` kinds a served model may name,
            as the deploying process allows them (``formats.trusted_factories``).
        prediction_log: where and how answers are logged (``uri``, ``sample_rate``,
            ``exclude_columns``, ``flush_rows``, ``flush_seconds``, ``max_buffer_rows``:
            ``monitor.log`` with the spec's storage), or None for no log (:mod:`raypipe.predlog`).

    ``user_config`` (see :meth:`reconfigure`) says which versions to serve.
    """

    def __init__(self, pipeline: str, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.005,
                 request_timeout_s: float = 10.0, max_body_bytes: int = 1 << 20,
                 api_key_hash: Optional[str] = None, trusted_factories: Optional[list[str]] = None,
                 prediction_log: Optional[dict[str, Any]] = None) -> None:
        self.pipeline = pipeline
        self.routing: Optional[Routing] = None
        self.request_timeout_s, self.max_body_bytes = request_timeout_s, max_body_bytes
        self.key_check = KeyCheck(api_key_hash) if api_key_hash else None
        self.trusted = tuple(trusted_factories or ())
        self.metrics = ServeMetrics(pipeline)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.started = time.time()
        self._cache: dict[tuple[str, int], Loaded] = {}
        self.log_settings = prediction_log
        self.log: Optional[PredictionLogWriter] = None
        if prediction_log:
            self.log = PredictionLogWriter(
                prediction_log["uri"], pipeline, writer_id=f"serve-{_replica_id()}",
                flush_rows=prediction_log["flush_rows"], flush_seconds=prediction_log["flush_seconds"],
                max_buffer_rows=prediction_log["max_buffer_rows"], on_count=self.metrics.log_count)
        self.sample_rate = float(prediction_log["sample_rate"]) if prediction_log else 0.0

    def __del__(self) -> None:
        """Serve's graceful shutdown calls this after the replica's requests have drained: write the log's buffer."""
        log = getattr(self, "log", None)
        if log is not None:
            log.close()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the ``user_config``: load what is new, then switch at once.

        ``{"champion": {"uri", "version", "manifest_sha256"}, "challenger": {...} | None,
        "canary_percent": float, "shadow": bool}``
        """
        def get(ref: Optional[dict[str, Any]]) -> Optional[Loaded]:
            if not ref:
                return None
            key = (ref["uri"], int(ref["version"]))
            exclude = list(self.log_settings["exclude_columns"]) if self.log_settings else None
            return self._cache.get(key) or load_version(ref["uri"], int(ref["version"]), self.pipeline, self.trusted,
                                                        ref.get("manifest_sha256"), exclude)

        new = Routing(champion=get(config["champion"]), challenger=get(config.get("challenger")),
                      canary_percent=float(config.get("canary_percent", 0.0)), shadow=bool(config.get("shadow", False)))
        old, self.routing = self.routing, new
        # The loaded model and features live as long as the replica: move them out of the collector's
        # generations, so its full passes stop walking them (tail latency under load).
        gc.collect()
        gc.freeze()
        self._cache = {(ref["uri"], int(ref["version"])): loaded for ref, loaded in
                       ((config["champion"], new.champion), (config.get("challenger"), new.challenger)) if loaded}
        self.metrics.serving(old, new)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[Request]) -> list[tuple[int, list[dict[str, Any]]]]:
        """Score a batch of requests (see :data:`Request`). Returns (version, answers) per request."""
        routing = self.routing
        assert routing is not None, "no model loaded"
        out: list[Any] = [None] * len(requests)
        rows_scored = 0
        for role, loaded in _roles(routing):
            picked = [i for i, req in enumerate(requests) if req[0] == (role == "challenger")]
            if not picked:
                continue
            rows = [r for i in picked for r in requests[i][1]]
            answers = loaded.predictor.predict_records(rows)
            rows_scored += len(rows)
            self.metrics.count(loaded, role, answers)
            start = 0
            for i in picked:
                n = len(requests[i][1])
                out[i] = (loaded.version, answers[start:start + n])
                start += n
            self._log(loaded, "canary" if role == "challenger" else "champion", requests, picked, out)
        self.metrics.batch_size.observe(rows_scored, tags={})
        self.metrics.serving(None, routing)  # re-set each batch: the version gauge stays fresh for every scrape
        if routing.shadow and routing.challenger is not None:
            # After the answers are handed back: the shadow version's work never delays or changes them.
            asyncio.get_running_loop().call_soon(self._shadow, routing, requests, out)
        return out

    def _log(self, loaded: Loaded, role: str, requests: list[Request], picked: list[int], out: list[Any]) -> None:
        """Hand the sampled requests' rows and answers to the log writer (a list append, never a wait)."""
        if self.log is None or loaded.log_format is None:
            return
        now, fmt, version = time.time(), loaded.log_format, loaded.version
        entries = [(requests[i][2], requests[i][3], now, version, role, requests[i][1], out[i][1], fmt)
                   for i in picked if requests[i][2] is not None]
        if entries:
            self.log.add(entries, sum(len(e[5]) for e in entries))

    def _shadow(self, routing: Routing, requests: list[Request], out: list[Any]) -> None:
        challenger = routing.challenger
        assert challenger is not None
        picked = [i for i, req in enumerate(requests) if not req[0]]  # the challenger answered the rest itself
        if not picked:
            return
        rows = [r for i in picked for r in requests[i][1]]
        champion_answers = [a for i in picked for a in out[i][1]]
        shadow_answers = challenger.predictor.predict_records(rows)
        self.metrics.count(challenger, "shadow", shadow_answers)
        start, shadow_out = 0, list(out)
        for i in picked:
            n = len(requests[i][1])
            shadow_out[i] = (challenger.version, shadow_answers[start:start + n])
            start += n
        self._log(challenger, "shadow", requests, picked, shadow_out)
        agree = sum(_label(a) == _label(b) for a, b in zip(champion_answers, shadow_answers))
        tags = {"version": str(challenger.version)}
        if agree:
            self.metrics.shadow_agreement.inc(agree, tags={**tags, "agree": "true"})
        if len(rows) - agree:
            self.metrics.shadow_agreement.inc(len(rows) - agree, tags={**tags, "agree": "false"})

    def log_status(self) -> Optional[dict[str, int]]:
        """The prediction log writer's totals (rows buffered, written, dropped, failed) and rows held now."""
        return None if self.log is None else self.log.status()

    def check_health(self) -> None:
        if self.routing is None:
            raise RuntimeError("model not loaded")

    def __serve_build_asgi_app__(self) -> Any:
        from raypipe.serve.http import build_fastapi

        return build_fastapi(self)

    # -- used by the HTTP layer ---------------------------------------------------------
    def authorised(self, headers: Any) -> bool:
        if self.key_check is None:
            return True
        auth = headers.get("authorization", "")
        return self.key_check(auth[7:] if auth[:7].lower() == "bearer " else headers.get("x-api-key", ""))

    def sampled(self) -> bool:
        """Whether this request's rows are logged (all rows of a request, or none)."""
        return self.log is not None and (self.sample_rate >= 1.0 or random.random() < self.sample_rate)

    def to_canary(self) -> bool:
        r = self.routing
        return bool(r and r.challenger is not None and r.canary_percent > 0 and random.random() * 100 < r.canary_percent)


ModelServerDeployment = serve.deployment(serve.ingress()(ModelServer))
DEPLOYMENT = "model"  # the one deployment of each application


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder (``import_path: raypipe.serve.app:build_app`` in a Serve config)."""
    return ModelServerDeployment.options(name=DEPLOYMENT).bind(**args)
