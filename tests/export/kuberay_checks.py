"""Structural checks of KubeRay manifests (RayJob, RayService, RayCluster; ``ray.io/v1``).

No registry package ships KubeRay's CRD schemas (checked: PyPI and npm have none; the CRDs
live in the KubeRay Go module and Helm chart), so these checks are structural: the fields
the v1 CRDs require and the operator needs, plus what raypipe itself relies on — the Ray
version it is tested with, token authentication on every pod and on the job submitter, and
entrypoints / import paths that name real raypipe commands and functions.
"""
from __future__ import annotations

import importlib
import re
import shlex
from typing import Any

import typer
import yaml

KINDS = ("RayJob", "RayService", "RayCluster")
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def raypipe_command() -> Any:
    """The click command tree of ``raypipe`` (typer >= 0.2x builds it on its own copy of click)."""
    import raypipe.cli

    return typer.main.get_command(raypipe.cli.app)


def check_entrypoint(entrypoint: str) -> list[str]:
    """Problems with a shell entrypoint that must run a raypipe command (empty: fine).

    The words after ``raypipe`` must name a command of the real CLI, and its options and
    arguments must parse as that command would parse them (click's own parser, nothing run).
    """
    words = shlex.split(entrypoint)
    if words[:3] in (["python", "-m", "raypipe"], ["python3", "-m", "raypipe"]):
        words = ["raypipe", *words[3:]]
    if not words or words[0].rsplit("/", 1)[-1] != "raypipe":
        return [f"entrypoint {entrypoint!r} does not run raypipe"]
    cmd = raypipe_command()
    path, args = ["raypipe"], words[1:]
    while hasattr(cmd, "commands"):  # a group
        if not args or args[0] not in cmd.commands:
            return [f"entrypoint {entrypoint!r}: {args[0] if args else '(nothing)'!r} is not a command of "
                    f"{' '.join(path)} (known: {', '.join(sorted(cmd.commands))})"]
        path.append(args[0])
        cmd, args = cmd.commands[args.pop(0)], args
    try:
        ctx = cmd.make_context(" ".join(path), list(args))
    except Exception as exc:  # a click usage error (typer's copy of click or click itself)
        if not hasattr(exc, "format_message"):
            raise
        return [f"entrypoint {entrypoint!r}: {' '.join(path)} rejects its arguments: {exc.format_message()}"]
    problems = []
    if path[1:] == ["run"] and ctx.params.get("only") is not None:
        from raypipe.runner import STAGE_NAMES

        if ctx.params["only"] not in STAGE_NAMES:
            problems.append(f"entrypoint {entrypoint!r}: --only {ctx.params['only']!r} is not a stage")
    return problems


def _containers(template: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    containers = (((template or {}).get("spec") or {}).get("containers")) or []
    if not containers:
        problems.append(f"{where}.template.spec.containers: required, at least one")
    for i, c in enumerate(containers):
        for key in ("name", "image"):
            if not c.get(key):
                problems.append(f"{where}.template.spec.containers[{i}].{key}: required")
    return containers


def _token_auth(containers: list[dict[str, Any]], where: str, problems: list[str]) -> None:
    for c in containers:
        env = {e.get("name"): e for e in c.get("env") or []}
        if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            problems.append(f"{where} container {c.get('name')!r}: RAY_AUTH_MODE=token missing")
        ref = ((env.get("RAY_AUTH_TOKEN") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if not (ref.get("name") and ref.get("key")):
            problems.append(f"{where} container {c.get('name')!r}: RAY_AUTH_TOKEN must come from a Secret")


def check_cluster_spec(cluster: Any, where: str, ray_version: str) -> list[str]:
    """A RayCluster's spec (also a RayJob's rayClusterSpec and a RayService's rayClusterConfig)."""
    problems: list[str] = []
    if not isinstance(cluster, dict):
        return [f"{where}: required mapping"]
    if str(cluster.get("rayVersion")) != ray_version:
        problems.append(f"{where}.rayVersion: {cluster.get('rayVersion')!r}, raypipe is tested with {ray_version}")
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append(f"{where}.headGroupSpec: required")
    else:
        params = head.get("rayStartParams") or {}
        if not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{where}.headGroupSpec.rayStartParams: values must be strings (got {params})")
        _token_auth(_containers(head.get("template"), f"{where}.headGroupSpec", problems), where, problems)
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        at = f"{where}.workerGroupSpecs[{i}]"
        if not group.get("groupName"):
            problems.append(f"{at}.groupName: required")
        lo, n, hi = group.get("minReplicas", 0), group.get("replicas", group.get("minReplicas", 0)), \
            group.get("maxReplicas", 2**31 - 1)
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= n <= hi):
            problems.append(f"{at}: replicas must lie within [minReplicas, maxReplicas] (got {lo}, {n}, {hi})")
        if not all(isinstance(v, str) for v in (group.get("rayStartParams") or {}).values()):
            problems.append(f"{at}.rayStartParams: values must be strings")
        _token_auth(_containers(group.get("template"), at, problems), at, problems)
    return problems


def _check_serve_config(text: Any, where: str) -> list[str]:
    if not isinstance(text, str):
        return [f"{where}: must be a YAML string (got {type(text).__name__})"]
    config = yaml.safe_load(text)
    problems = []
    for app in config.get("applications") or []:
        module, _, attr = str(app.get("import_path", "")).partition(":")
        try:
            if not callable(getattr(importlib.import_module(module), attr)):
                raise AttributeError(attr)
        except (ImportError, AttributeError):
            problems.append(f"{where}: application {app.get('name')!r} import_path {app.get('import_path')!r} "
                            "does not name a raypipe function")
    if not config.get("applications"):
        problems.append(f"{where}.applications: at least one")
    return problems


def check_manifest(doc: dict[str, Any], ray_version: str | None = None) -> list[str]:
    """Every problem with one KubeRay manifest (empty: it passes)."""
    if ray_version is None:
        import ray

        ray_version = ray.__version__
    kind = doc.get("kind")
    where = f"{kind} {((doc.get('metadata') or {}).get('name'))!r}"
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"{where}: apiVersion {doc.get('apiVersion')!r}, expected 'ray.io/v1'")
    if kind not in KINDS:
        return problems + [f"{where}: kind must be one of {KINDS}"]
    name = (doc.get("metadata") or {}).get("name")
    if not (isinstance(name, str) and DNS_1123.match(name) and len(name) <= 63):
        problems.append(f"{where}: metadata.name must be a DNS-1123 label of at most 63 characters")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return problems + [f"{where}: spec is required"]
    if kind == "RayCluster":
        problems += check_cluster_spec(spec, f"{where} spec", ray_version)
    elif kind == "RayService":
        problems += check_cluster_spec(spec.get("rayClusterConfig"), f"{where} spec.rayClusterConfig", ray_version)
        problems += _check_serve_config(spec.get("serveConfigV2"), f"{where} spec.serveConfigV2")
    else:
        entry = spec.get("entrypoint")
        if not isinstance(entry, str) or not entry.strip():
            problems.append(f"{where}: spec.entrypoint is required")
        else:
            problems += check_entrypoint(entry)
        if "clusterSelector" not in spec:
            problems += check_cluster_spec(spec.get("rayClusterSpec"), f"{where} spec.rayClusterSpec", ray_version)
        if spec.get("shutdownAfterJobFinishes") is not True and "clusterSelector" not in spec:
            problems.append(f"{where}: spec.shutdownAfterJobFinishes must be true (the cluster exists for one job)")
        submitter = spec.get("submitterPodTemplate")
        if submitter is not None:  # it runs `ray job submit`, which needs the token too
            _token_auth(_containers(submitter, f"{where} spec.submitterPodTemplate", problems), where, problems)
    return problems
