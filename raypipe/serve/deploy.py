"""Deploying a registry version as a Ray Serve application, and talking to it."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from raypipe.registry import Registry
from raypipe.spec import Spec
from raypipe.store import Store
from raypipe.validate.schema import feature_columns


@dataclass
class Endpoint:
    """A deployed pipeline: where it answers and which version it serves."""

    url: str
    version: int
    app_name: str

    def post_predict(self, rows: dict[str, Any] | list[dict[str, Any]], timeout: float = 30.0) -> Any:
        import httpx

        resp = httpx.post(f"{self.url}/predict", json=rows, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def wait(self) -> None:
        """Block until Ctrl-C, then shut Serve down."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            shutdown()


def deploy(spec: Spec, *, version: int | None = None, alias: str | None = None, address: str | None = None,
           port: int | None = None) -> Endpoint:
    """Deploy the champion (or a given version/alias) and wait until it is healthy."""
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from raypipe.runtime import connect_for
    from raypipe.serve.app import ModelServerDeployment

    reg = Registry(spec.storage, spec.name)
    v = reg.resolve(version=version, alias=alias)
    vs = reg.version_store(v)
    connect_for(spec, address)
    http_port = spec.deploy.port if port is None else port
    serve.start(http_options={"host": spec.deploy.host, "port": http_port},
                logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
    d = spec.deploy
    deployment = ModelServerDeployment.options(
        name=f"{spec.name}-model",
        max_ongoing_requests=d.ongoing,
        autoscaling_config={
            "min_replicas": d.autoscaling.min_replicas,
            "initial_replicas": max(1, d.autoscaling.min_replicas),
            "max_replicas": d.autoscaling.max_replicas,
            "target_ongoing_requests": d.autoscaling.target_ongoing_requests,
            "upscale_delay_s": d.autoscaling.upscale_delay_s,
            "downscale_delay_s": d.autoscaling.downscale_delay_s,
        },
        ray_actor_options={"num_cpus": 0.5},
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    app = deployment.bind(vs.full_uri(), v, spec.name, d.batching.max_batch_size, d.batching.batch_wait_timeout_s)
    serve.run(app, name=spec.name, route_prefix=spec.route_prefix, blocking=False)
    host = "127.0.0.1" if spec.deploy.host in ("0.0.0.0", "::") else spec.deploy.host
    return Endpoint(url=f"http://{host}:{http_port}{spec.route_prefix}", version=v, app_name=spec.name)


def sample_request(spec: Spec, version: int, n: int = 2) -> list[dict[str, Any]]:
    """A few rows of the version's own test split, as a client would send them."""
    import pyarrow.dataset as pads

    reg = Registry(spec.storage, spec.name)
    vs = reg.version_store(version)
    schema, lineage = vs.read_json("schema.json"), vs.read_json("lineage.json")
    root = Store(spec.storage)
    rel = f"stages/validate/{lineage['stages']['validate'][:20]}/valid/test"
    cols = feature_columns(schema)
    target = (schema.get("target") or {}).get("name")
    table = pads.dataset(root.path(rel), filesystem=root.fs, format="parquet").head(
        2000, columns=cols + schema["id_columns"] + ([target] if target else []))
    required = [c for c in cols if not schema["columns"][c].get("nullable", True)]
    rows, labels = [], set()
    for row in table.to_pylist():
        label = row.pop(target, None) if target else None
        # one row per class first (a fraud demo should show a fraud), then any rows
        if all(row[c] is not None for c in required) and (label not in labels or len(labels) >= n):
            labels.add(label)
            rows.append({k: _json_value(v) for k, v in row.items()})
        if len(rows) == n:
            break
    return rows


def _json_value(v: Any) -> Any:
    """A stored value as a client sends it: NaN as null, an image as nested lists."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v.tolist() if hasattr(v, "tolist") else v


def shutdown() -> None:
    """Stop Serve and, for a local Ray, Ray itself."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
