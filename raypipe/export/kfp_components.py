"""The bodies of the KFP tasks :mod:`raypipe.export.kfp` compiles (lightweight Python components).

KFP copies each function's *source* into the task's container and runs it there, so a body
imports what it needs inside itself and uses nothing else from this module. No
``from __future__ import annotations`` here: KFP reads the parameter types from the real
annotations (``str``, ``float``) to build the component's interface.
"""


def raypipe_stage(spec: str, stage: str, address: str, spec_sha256: str) -> str:
    """Run one raypipe stage: ``raypipe run SPEC --only STAGE --no-serve --json``; return its JSON summary."""
    # The body runs standalone in the task's container (KFP copies its source): imports stay inside.
    import hashlib
    import subprocess
    import sys

    if spec_sha256:
        with open(spec, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != spec_sha256:
            raise RuntimeError(f"{spec} is not the spec this pipeline was exported from (sha256 {got}, expected "
                               f"{spec_sha256}): export the pipeline again, or run it with spec_sha256=''")
    cmd = [sys.executable, "-m", "raypipe", "run", spec, "--only", stage, "--no-serve", "--json"]
    if address:
        cmd += ["--address", address]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"raypipe stage {stage!r} failed with exit code {proc.returncode} (2: invalid spec or an "
                           "earlier stage's artifact is missing, 3: data validation, 4: evaluation gate)")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "{}"


def raypipe_rayjob(manifest: str, namespace: str, poll_s: float, timeout_s: float) -> str:
    """Create the KubeRay RayJob ``manifest`` (JSON) and wait for its job to succeed; return its final status."""
    # The body runs standalone in the task's container (KFP copies its source): imports stay inside.
    import json
    import time
    import uuid

    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    body = json.loads(manifest)
    if not namespace:
        namespace = body["metadata"].get("namespace", "")
    if not namespace:
        try:  # the namespace of the pod this task runs in
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip()
        except OSError:
            namespace = "default"
    body["metadata"]["namespace"] = namespace
    body["metadata"]["name"] = body["metadata"]["name"][:54].rstrip("-") + "-" + uuid.uuid4().hex[:8]  # one per try
    name = body["metadata"]["name"]
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", body)
    print(f"created RayJob {namespace}/{name}: {body['spec']['entrypoint']}", flush=True)
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        obj = api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
        status = obj.get("status") or {}
        job, deployment = status.get("jobStatus", ""), status.get("jobDeploymentStatus", "")
        if (job, deployment) != last:
            print(f"RayJob {name}: jobDeploymentStatus={deployment or '-'} jobStatus={job or '-'}", flush=True)
            last = (job, deployment)
        if job == "SUCCEEDED":
            return json.dumps({"rayjob": name, "namespace": namespace, "jobStatus": job})
        if job in ("FAILED", "STOPPED") or deployment == "Failed":
            raise RuntimeError(f"RayJob {namespace}/{name} ended with jobStatus={job or '-'} "
                               f"jobDeploymentStatus={deployment or '-'}: {status.get('message', '')} "
                               f"(kubectl logs -l job-name={name} shows the submitter's output)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"RayJob {namespace}/{name} still {job or deployment or 'pending'} after {timeout_s}s")
        time.sleep(poll_s)
