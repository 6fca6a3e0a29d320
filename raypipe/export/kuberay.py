"""KubeRay manifests raypipe generates: a ``RayJob`` that runs one stage (or the whole run).

Pure functions: they build plain dicts (the YAML a user would ``kubectl apply``) and touch
neither Kubernetes nor Ray, so tests check them like the hand-written ones in ``clusters/``.
The shape follows ``clusters/kuberay-rayjob.yaml``: token authentication from a Secret on
every pod and on the submitter (Ray 2.60 turns token auth on; ``ray job submit`` needs the
token too), a cluster that exists for one job (``shutdownAfterJobFinishes``), no retries
(``backoffLimit: 0``: a failed stage is failed; the pipeline's resume does the rest).
"""
from __future__ import annotations

import re
import shlex
from typing import Any

__all__ = ["API_VERSION", "RAY_VERSION", "rayjob_entrypoint", "rayjob_manifest", "k8s_name"]

API_VERSION = "ray.io/v1"
RAY_VERSION = "2.60.0"
TOKEN_SECRET = "raypipe-ray-token"


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lowercase alphanumerics and '-', at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-") or "raypipe"


def rayjob_entrypoint(spec_path: str, stage: str | None = None) -> str:
    """``raypipe run SPEC [--only STAGE] --address auto --no-serve --json``, quoted for a shell."""
    args = ["raypipe", "run", spec_path, *(["--only", stage] if stage else []), "--address", "auto", "--no-serve",
            "--json"]
    return shlex.join(args)


def _token_env(secret: str) -> list[dict[str, Any]]:
    return [{"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}]


def rayjob_manifest(spec_path: str, stage: str | None, *, image: str, pipeline: str, namespace: str | None = None,
                    token_secret: str = TOKEN_SECRET, cpus: int = 2, memory: str = "8Gi", workers: int = 1,
                    active_deadline_s: int = 3600, ttl_s: int = 600) -> dict[str, Any]:
    """The ``RayJob`` that runs ``stage`` of the pipeline at ``spec_path`` (a path inside ``image``).

    Args:
        spec_path: the spec's path inside the image (its relative paths resolve from its folder,
            as for ``raypipe run``). Its ``storage:`` must be shared by every pod and every stage's
            cluster: an object-store URI or a ReadWriteMany volume.
        stage: one stage (``raypipe run --only``), or None for the whole run.
        image: an image with raypipe and Ray 2.60, used by head, workers and the submitter.
        pipeline: the spec's name, for the RayJob's name and labels.
        token_secret: the Secret whose ``token`` key holds the Ray auth token.
    """
    env = _token_env(token_secret)
    res = {"requests": {"cpu": str(cpus), "memory": memory}, "limits": {"cpu": str(cpus), "memory": memory}}
    metadata: dict[str, Any] = {"name": k8s_name("raypipe", pipeline, stage or "run"),
                                "labels": {"app.kubernetes.io/name": "raypipe", "raypipe.io/pipeline":
                                           k8s_name(pipeline), "raypipe.io/stage": stage or "all"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": rayjob_entrypoint(spec_path, stage),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_s,
            "activeDeadlineSeconds": active_deadline_s,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": str(cpus)},
                    "template": {"spec": {"containers": [{
                        "name": "ray-head", "image": image, "env": env, "resources": res,
                        "ports": [{"containerPort": 6379, "name": "gcs-server"},
                                  {"containerPort": 8265, "name": "dashboard"},
                                  {"containerPort": 10001, "name": "client"}]}]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "cpu-workers", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": {"num-cpus": str(cpus)},
                    "template": {"spec": {"containers": [{"name": "ray-worker", "image": image, "env": env,
                                                          "resources": res}]}},
                }],
            },
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "ray-job-submitter", "image": image, "env": env}]}},
        },
    }
