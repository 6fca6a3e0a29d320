"""Deploying a registry version as a Ray Serve application, and talking to it."""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import yaml

from raypipe.errors import SpecError
from raypipe.model.formats import trusted_factories
from raypipe.registry import Registry
from raypipe.runtime import SERVE_PROFILE
from raypipe.schema import feature_columns
from raypipe.apikey import hash_key
from raypipe.spec import Spec
from raypipe.stage import OUTPUTS_FILE, ValidateOutput, artifact_path
from raypipe.store import Store
from raypipe.version import __version__

log = logging.getLogger("raypipe")


@dataclass
class Endpoint:
    """A deployed pipeline: where it answers and which version it serves."""

    url: str
    version: int
    app_name: str

    def post_predict(self, rows: dict[str, Any] | list[dict[str, Any]], timeout: float = 30.0,
                     route: str = "/predict") -> Any:
        """One prediction request (``route="/act"``: a policy's), with the documented retry
        (:mod:`raypipe.serve.client`)."""
        import httpx

        from raypipe.serve.client import post_predict

        with httpx.Client(timeout=timeout) as http:
            resp = post_predict(http, self.url, rows, route=route)
        resp.raise_for_status()
        return resp.json()

    def post_act(self, body: dict[str, Any], timeout: float = 30.0) -> Any:
        """A policy's answer to ``{"observation": ...}`` or ``{"observations": [...]}`` (``POST /act``)."""
        return self.post_predict(body, timeout, route="/act")

    def wait(self) -> None:
        """Block until Ctrl-C, then shut Serve down."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            shutdown(self.app_name)


def deploy(spec: Spec, *, version: int | None = None, alias: str | None = None, address: str | None = None,
           port: int | None = None, app_name: str | None = None) -> Endpoint:
    """Deploy the champion (or a given version/alias), or update the running application in place.

    The versions served travel in the deployment's ``user_config``: deploying again after a
    promotion (same spec, new champion) makes Serve call ``reconfigure`` on the running
    replicas, with no restart and no failed request. ``app_name`` (default: the pipeline's
    name) lets one pipeline run as several applications, each with its own route prefix.
    """
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from raypipe.runtime import connect_for
    from raypipe.serve.app import ModelServerDeployment

    v = Registry.for_spec(spec).resolve(version=version, alias=alias)
    name = app_name or spec.name
    options, args = deployment_options(spec, v), init_args(spec)
    check_log_columns(spec, v)
    connect_for(spec, address, serving=True)
    d = spec.deploy
    http_port = d.port if port is None else port
    serve.start(http_options={"host": d.host, "port": http_port, "request_timeout_s": http_timeout_s(spec)},
                logging_config=LoggingConfig(**QUIET))
    # An explicit code version: without one, every serve.run counts as new code and replaces the replicas.
    # With it, a change of user_config alone (a promotion) is applied by `reconfigure` on the running ones.
    # (`version` is internal-only in Deployment.options since Ray 2.x; the swap test checks the replicas stay.)
    app = ModelServerDeployment.options(**options, logging_config=LoggingConfig(**QUIET), version=code_version(args),
                                        _internal=True).bind(**args)
    serve.run(app, name=name, route_prefix=spec.route_prefix, blocking=False)
    host, http_port = serving_address(d.host, http_port)
    return Endpoint(url=f"http://{host}:{http_port}{spec.route_prefix}", version=v, app_name=name)


def serving_address(host: str, port: int) -> tuple[str, int]:
    """Where Serve really listens: a running Serve keeps the host and port it was started with."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if (http.host, http.port) != (host, port):
        log.warning("Serve already runs on %s:%s; deploy.host/port (%s:%s) apply only when Serve starts",
                    http.host, http.port, host, port)
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", None) else http.host
    return host, int(http.port)


QUIET = {"log_level": "WARNING", "enable_access_log": False}


def http_timeout_s(spec: Spec) -> float:
    """Serve's own limit on a whole HTTP request: reading the body and answering each get request_timeout_s."""
    return 2 * spec.deploy.request_timeout_s + 5


def code_version(args: dict[str, Any]) -> str:
    """What makes replicas different code: the constructor's arguments and the source the replica runs."""
    import inspect

    from raypipe import feedback, predlog
    from raypipe.model import predictor
    from raypipe.serve import app, http, request_model

    h = hashlib.sha256(json.dumps({"raypipe": __version__, "args": args}, sort_keys=True).encode())
    for module in (app, http, request_model, predictor, predlog, feedback):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


def init_args(spec: Spec) -> dict[str, Any]:
    """The replica's constructor arguments: fixed for the deployment's life (versions are in user_config)."""
    d = spec.deploy
    return {"pipeline": spec.name, "max_batch_size": d.batching.max_batch_size,
            "batch_wait_timeout_s": d.batching.batch_wait_timeout_s, "request_timeout_s": d.request_timeout_s,
            "max_body_bytes": d.max_body_bytes, "api_key_hash": api_key_digest(spec),
            "trusted_factories": list(trusted_factories(spec)), "prediction_log": log_args(spec)}


def log_args(spec: Spec) -> dict[str, Any] | None:
    """``monitor.log`` as the replicas take it, with the storage they write to; None when the log is off."""
    lg = spec.monitor.log
    if not lg.enabled:
        return None
    return {"uri": Store(spec.storage).full_uri(), "sample_rate": lg.sample_rate,
            "exclude_columns": list(lg.exclude_columns), "flush_rows": lg.flush_rows,
            "flush_seconds": lg.flush_seconds, "max_buffer_rows": lg.max_buffer_rows}


def check_log_columns(spec: Spec, version: int) -> None:
    """``monitor.log.exclude_columns`` must name input columns of the served version: a typo would log the PII."""
    from raypipe.predlog import LogFormat

    lg = spec.monitor.log
    if not lg.enabled or not lg.exclude_columns or spec.data.env is not None:
        return
    inputs = LogFormat.input_names(Registry.for_spec(spec).version_store(version).read_json("schema.json"))
    unknown = [c for c in lg.exclude_columns if c not in inputs]
    if unknown:
        raise SpecError(f"monitor.log.exclude_columns: {unknown} are not input columns of {spec.name!r} version "
                        f"{version} (its inputs: {', '.join(inputs)}); fix the names, or remove them")


def deployment_options(spec: Spec, version: int) -> dict[str, Any]:
    """The Serve deployment's options, as ``Deployment.options`` and a Serve config file both take them."""
    from raypipe.serve.app import DEPLOYMENT

    d = spec.deploy
    return {
        "name": DEPLOYMENT,
        "max_ongoing_requests": d.ongoing,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
        "user_config": serving_config(spec, Registry.for_spec(spec), version),
        "autoscaling_config": {
            "min_replicas": d.autoscaling.min_replicas,
            "initial_replicas": max(1, d.autoscaling.min_replicas),
            "max_replicas": d.autoscaling.max_replicas,
            "target_ongoing_requests": d.autoscaling.target_ongoing_requests,
            "upscale_delay_s": d.autoscaling.upscale_delay_s,
            "downscale_delay_s": d.autoscaling.downscale_delay_s,
            "look_back_period_s": d.autoscaling.look_back_period_s,
        },
        "ray_actor_options": {"num_cpus": 0.5},
    }


def serve_config(spec: Spec, *, version: int | None = None, alias: str | None = None,
                 app_name: str | None = None) -> dict[str, Any]:
    """A Serve config file (``serve deploy config.yaml``, or a RayService's ``serveConfigV2``) for this pipeline.

    The application is built by :func:`raypipe.serve.app.build_app` from ``args``; the
    deployment's options, including the versions in ``user_config``, are spelled out so a
    promotion can be rolled out by editing (or re-emitting) this file. The API key, when
    ``deploy.auth`` is set, appears only as its salted scrypt hash.
    """
    v = Registry.for_spec(spec).resolve(version=version, alias=alias)
    name = app_name or spec.name
    d = spec.deploy
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": d.host, "port": d.port, "request_timeout_s": http_timeout_s(spec)},
        "logging_config": QUIET,
        "applications": [{
            "name": name,
            "route_prefix": spec.route_prefix,
            "import_path": "raypipe.serve.app:build_app",
            "args": init_args(spec),
            "deployments": [{**deployment_options(spec, v), "logging_config": QUIET}],
        }],
    }


def serving_config(spec: Spec, reg: Registry, version: int) -> dict[str, Any]:
    """The deployment's ``user_config``: which versions the replicas hold, and the traffic split."""
    d = spec.deploy
    out: dict[str, Any] = {"champion": _served(reg, version),
                           "challenger": None, "canary_percent": 0.0, "shadow": d.shadow}
    if d.canary is not None or d.shadow:
        name = d.canary.alias if d.canary else "challenger"
        challenger = reg.aliases().get(name)
        if challenger is None:
            field = "deploy.canary.alias" if d.canary else "deploy.shadow"  # shadow alone mirrors to 'challenger'
            raise SpecError(f"{field}: no registry alias {name!r} in {spec.name!r}; set it with "
                            f"`raypipe registry promote SPEC VERSION --alias {name}` or remove deploy.canary/shadow")
        out["challenger"] = _served(reg, challenger)
        out["canary_percent"] = d.canary.percent if d.canary else 0.0
    return out


def _served(reg: Registry, version: int) -> dict[str, Any]:
    """A served version as replicas get it: checked here (files, signature), its manifest pinned for them.

    Replicas never hold the signing key: they load a version only if its manifest is still
    the one this process checked, so a version re-sealed in storage after the deploy is
    refused by every replica that starts later.
    """
    return {"uri": reg.version_store(version).full_uri(), "version": version,
            "manifest_sha256": reg.check_version(version)}


def api_key_digest(spec: Spec) -> str | None:
    """The salted scrypt hash of the API key named by ``deploy.auth.api_key_env``: the replicas get this, never the key."""
    auth = spec.deploy.auth
    if auth is None:
        return None
    key = os.environ.get(auth.api_key_env)
    if not key:
        raise SpecError(f"deploy.auth.api_key_env: the environment variable {auth.api_key_env!r} is not set or empty; "
                        "export it with the API key clients will send, or remove deploy.auth")
    return hash_key(key, spec.name)


def sample_request(spec: Spec, version: int, n: int = 2) -> list[dict[str, Any]] | dict[str, Any]:
    """A few rows of the version's own test split, as a client would send them (one per class first); for a
    policy, ``{"observations": [...]}``: the first observation of ``n`` seeded episodes of its environment."""
    import pyarrow.dataset as pads

    if spec.data.env is not None:
        import numpy as np

        from raypipe.envs.make import make_env

        env = make_env(spec.data.env.model_dump())
        try:
            return {"observations": [np.asarray(env.reset(seed=spec.evaluate.seed + i)[0]).tolist() for i in range(n)]}
        finally:
            env.close()
    vs = Registry.for_spec(spec).version_store(version)
    schema, lineage = vs.read_json("schema.json"), vs.read_json("lineage.json")
    validate = Store(spec.storage).sub(artifact_path("validate", lineage["stages"]["validate"]))
    split = ValidateOutput.from_json(validate.read_json(OUTPUTS_FILE)).splits["test"]
    cols = feature_columns(schema)
    target = (schema.get("target") or {}).get("name")
    table = pads.dataset(validate.path(split), filesystem=validate.fs, format="parquet").head(
        2000, columns=cols + schema["id_columns"] + ([target] if target else []))
    required = [c for c in cols if not schema["columns"][c].get("nullable", True)]
    first, rest, labels = [], [], set()
    for row in table.to_pylist():
        label = row.pop(target, None) if target else None
        if all(row[c] is not None for c in required):
            (rest if label in labels else first).append(row)
            labels.add(label)
    return [{k: _json_value(v) for k, v in row.items()} for row in (first + rest)[:n]]


def _json_value(v: Any) -> Any:
    """A stored value as a client sends it: NaN as null, a date as ISO 8601, an image as nested lists."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()  # a date column as the endpoint takes it (ISO 8601)
    return v.tolist() if hasattr(v, "tolist") else v


def shutdown(app_name: str | None = None) -> None:
    """Stop Serve and, for a local Ray, Ray itself.

    On the Ray that `raypipe up` keeps running, only ``app_name`` is deleted: Serve's controller
    and proxies stay up for the next run (Serve's first start costs 10-15 s) and for other
    applications on it.
    """
    import ray
    from ray import serve

    from raypipe.runtime import joined_kept_ray

    if ray.is_initialized():
        if app_name and joined_kept_ray():
            serve.delete(app_name)
        else:
            serve.shutdown()
        ray.shutdown()


def rayservice_manifest(spec: Spec, config: dict[str, Any], *, image: str = "raypipe:latest") -> dict[str, Any]:
    """A KubeRay ``RayService`` serving ``config`` (from :func:`serve_config`).

    The cluster runs Serve's HAProxy ingress and Ray's token authentication; the pipeline's
    ``storage`` must be reachable from every pod (an object store URI, or a ReadWriteMany
    volume mounted at the same path). With ``deploy.auth``, the API key itself is not in
    the manifest: only its digest is, in the application's args.
    """
    env = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "raypipe-ray-token", "key": "token"}}},
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1" if spec.deploy.ingress == "haproxy" else "0"},
        *({"name": k, "value": v} for k, v in SERVE_PROFILE.items()),  # as on a local Ray (runtime.serve_env)
    ]
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}

    def container(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "image": image, "env": env, "resources": resources, "ports": ports}

    port = config["http_options"]["port"]
    a = spec.deploy.autoscaling
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"raypipe-{spec.name}"},
        "spec": {
            "serveConfigV2": dump_yaml({**config, "http_options": {**config["http_options"], "host": "0.0.0.0"}}),
            "rayClusterConfig": {
                "rayVersion": ray_version(),
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": {"spec": {"containers": [container("ray-head", [
                        {"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                        {"containerPort": port, "name": "serve"}])]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "serve-workers", "replicas": max(1, a.min_replicas), "minReplicas": max(1, a.min_replicas),
                    "maxReplicas": max(1, a.max_replicas), "rayStartParams": {"num-cpus": "2"},
                    "template": {"spec": {"containers": [container("ray-worker", [{"containerPort": port,
                                                                                    "name": "serve"}])]}},
                }],
            },
        },
    }


def ray_version() -> str:
    import ray

    return ray.__version__


class _Dumper(yaml.SafeDumper):
    """Readable YAML: no anchors for repeated dicts, multi-line strings as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, s: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
