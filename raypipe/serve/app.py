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

from raypipe.serve.apikey import KeyCheck
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
    row_model: Any  # the pydantic model of one row
    rows: TypeAdapter[Any]  # a list of rows


@dataclass(frozen=True)
class Routing:
    """What a replica serves: swapped as one object, so a request sees one consistent state."""

    champion: Loaded
    challenger: Optional[Loaded] = None
    canary_percent: float = 0.0
    shadow: bool = False


def load_version(uri: str, version: int, pipeline: str, trusted: tuple[str, ...] = (),
                 manifest_sha256: Optional[str] = None) -> Loaded:
    store = Store(uri)
    predictor = Predictor.from_version(store, version, trusted, manifest_sha256=manifest_sha256)
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
    return Loaded(version, predictor, metadata, row, TypeAdapter(list[row]))  # type: ignore[valid-type]


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

    def count(self, loaded: Loaded, role: str, answers: list[dict[str, Any]]) -> None:
        tags = {"version": str(loaded.version), "role": role}
        if TASKS[loaded.predictor.task].scores == "value":  # a value is no class: one series, not one per value
            self.predictions.inc(len(answers), tags={**tags, "prediction": "value"})
            return
        labels = [str(a.get("prediction", a.get("cluster", a.get("is_anomaly")))) for a in answers]
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        for value, n in zip(values, counts):
            self.predictions.inc(int(n), tags={**tags, "prediction": str(value)})

    def serving(self, old: Optional[Routing], new: Routing) -> None:
        if old is not None:
            for role, loaded in _roles(old):
                self.version_info.set(0, tags={"version": str(loaded.version), "role": role})
        for role, loaded in _roles(new):
            self.version_info.set(1, tags={"version": str(loaded.version), "role": role})


def _roles(r: Routing) -> list[tuple[str, Loaded]]:
    return [("champion", r.champion)] + ([("challenger", r.challenger)] if r.challenger else [])


class ModelServer:
    """One replica.

    Args:
        pipeline: the pipeline name (for /metadata and metric tags).
        max_batch_size, batch_wait_timeout_s: dynamic batching settings.
        request_timeout_s: a prediction not answered by then gets a 408.
        max_body_bytes: larger bodies get a 413.
        api_key_hash: the API key's salted scrypt hash (:mod:`raypipe.serve.apikey`), or None
            for no auth. The key itself never leaves the process that deployed the app.
        trusted_factories: the ``torch:<module>:<factory>`` kinds a served model may name,
            as the deploying process allows them (``formats.trusted_factories``).

    ``user_config`` (see :meth:`reconfigure`) says which versions to serve.
    """

    def __init__(self, pipeline: str, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.005,
                 request_timeout_s: float = 10.0, max_body_bytes: int = 1 << 20,
                 api_key_hash: Optional[str] = None, trusted_factories: Optional[list[str]] = None) -> None:
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

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the ``user_config``: load what is new, then switch at once.

        ``{"champion": {"uri", "version", "manifest_sha256"}, "challenger": {...} | None,
        "canary_percent": float, "shadow": bool}``
        """
        def get(ref: Optional[dict[str, Any]]) -> Optional[Loaded]:
            if not ref:
                return None
            key = (ref["uri"], int(ref["version"]))
            return self._cache.get(key) or load_version(ref["uri"], int(ref["version"]), self.pipeline, self.trusted,
                                                        ref.get("manifest_sha256"))

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
    async def predict_batch(self, requests: list[tuple[bool, list[dict[str, Any]]]]) -> list[tuple[int, list[dict[str, Any]]]]:
        """Score a batch of requests; each is (goes to the canary?, rows). Returns (version, answers) per request."""
        routing = self.routing
        assert routing is not None, "no model loaded"
        out: list[Any] = [None] * len(requests)
        rows_scored = 0
        for role, loaded in _roles(routing):
            picked = [i for i, (canary, _) in enumerate(requests) if canary == (role == "challenger")]
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
        self.metrics.batch_size.observe(rows_scored, tags={})
        self.metrics.serving(None, routing)  # re-set each batch: the version gauge stays fresh for every scrape
        if routing.shadow and routing.challenger is not None:
            # After the answers are handed back: the shadow version's work never delays or changes them.
            asyncio.get_running_loop().call_soon(self._shadow, routing, requests, out)
        return out

    def _shadow(self, routing: Routing, requests: list[tuple[bool, list[dict[str, Any]]]], out: list[Any]) -> None:
        challenger = routing.challenger
        assert challenger is not None
        picked = [i for i, (canary, _) in enumerate(requests) if not canary]  # the challenger answered the rest itself
        if not picked:
            return
        rows = [r for i in picked for r in requests[i][1]]
        champion_answers = [a for i in picked for a in out[i][1]]
        shadow_answers = challenger.predictor.predict_records(rows)
        self.metrics.count(challenger, "shadow", shadow_answers)
        agree = sum(a.get("prediction") == b.get("prediction") for a, b in zip(champion_answers, shadow_answers))
        tags = {"version": str(challenger.version)}
        if agree:
            self.metrics.shadow_agreement.inc(agree, tags={**tags, "agree": "true"})
        if len(rows) - agree:
            self.metrics.shadow_agreement.inc(len(rows) - agree, tags={**tags, "agree": "false"})

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

    def to_canary(self) -> bool:
        r = self.routing
        return bool(r and r.challenger is not None and r.canary_percent > 0 and random.random() * 100 < r.canary_percent)


ModelServerDeployment = serve.deployment(serve.ingress()(ModelServer))
DEPLOYMENT = "model"  # the one deployment of each application


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder (``import_path: raypipe.serve.app:build_app`` in a Serve config)."""
    return ModelServerDeployment.options(name=DEPLOYMENT).bind(**args)
