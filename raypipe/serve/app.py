"""The Ray Serve application: a schema-validated FastAPI ingress over the Predictor.

The FastAPI app is built inside each replica (``__serve_build_asgi_app__``) from the
version's stored schema, so the request model is generated where it is used and
never pickled. Requests are batched with ``@serve.batch``; the feature pipeline and
the model run once per batch.
"""

import time
from typing import Any, Optional

from ray import serve

from raypipe.predictor import Predictor
from raypipe.store import Store


class ModelServer:
    """One replica: a registry version's predictor behind FastAPI.

    Args:
        version_uri: the registry version folder.
        version: its number.
        pipeline: the pipeline name (for /metadata).
        max_batch_size, batch_wait_timeout_s: dynamic batching settings.
    """

    def __init__(self, version_uri: str, version: int, pipeline: str, max_batch_size: int = 64,
                 batch_wait_timeout_s: float = 0.005) -> None:
        self.predictor: Optional[Predictor] = None
        store = Store(version_uri)
        self.predictor = Predictor.from_version(store, version)
        self.metadata = {
            "pipeline": pipeline,
            "version": version,
            "metrics": store.read_json("metrics.json").get("metrics"),
            "lineage": store.read_json("lineage.json"),
            "model": store.read_json("model/model.json"),
            "features": self.predictor.features.feature_names_,
            "threshold": self.predictor.threshold,
        }
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.started = time.time()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        rows = [r for req in requests for r in req]
        answers = self.predictor.predict_records(rows)
        out, i = [], 0
        for req in requests:
            out.append(answers[i : i + len(req)])
            i += len(req)
        return out

    def check_health(self) -> None:
        if self.predictor is None:
            raise RuntimeError("model not loaded")

    def __serve_build_asgi_app__(self) -> Any:
        return build_fastapi(self)


def build_fastapi(server: ModelServer) -> Any:
    from fastapi import Body, FastAPI

    from raypipe.serve.request_model import request_model

    Row = request_model(server.predictor.schema, name=f"{server.metadata['pipeline'].replace('-', '_')}_row")
    app = FastAPI(title=f"raypipe: {server.metadata['pipeline']}", version=str(server.metadata["version"]))

    @app.post("/predict")
    async def predict(body: Row | list[Row] = Body(...)) -> dict[str, Any]:  # type: ignore[valid-type]
        """Predict one row (an object) or many (a list of objects)."""
        single = not isinstance(body, list)
        rows = [body] if single else body
        if not rows:
            return {"version": server.metadata["version"], "predictions": []}
        records = [r.model_dump() for r in rows]
        answers = await server.predict_batch(records)
        out: dict[str, Any] = {"version": server.metadata["version"]}
        if single:
            out.update(answers[0])
        else:
            out["predictions"] = answers
        return out

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": server.metadata["version"], "uptime_s": round(time.time() - server.started, 1)}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return server.metadata

    return app


ModelServerDeployment = serve.deployment(serve.ingress()(ModelServer))
