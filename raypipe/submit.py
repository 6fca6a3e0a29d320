"""``raypipe submit``: a run, or one stage of it, as a Ray job on a cluster, through Ray's Jobs API.

The same command works from a laptop, an Airflow worker or a KFP step: it sends the spec to the cluster's
dashboard (``JobSubmissionClient``), runs ``raypipe run pipeline.yaml --address auto --no-serve --json`` there
(with ``--only`` / ``--until`` / ``--force`` / ``--run-key`` passed on), streams the job's output here while it
runs and ends with the job's own exit code: 2 for a bad spec or a missing earlier stage, 3 bad data,
4 a failed gate, as if the run were local. Interrupted (Ctrl-C, SIGTERM from an orchestrator), it stops the job.

What travels with the job (its ``runtime_env``):

- the spec, in a working dir of its own, with its relative paths (``storage``, a file source's ``path``, an
  MQTT landing, a SQLite file, a schema file) made absolute as they resolve here: the cluster must see them at
  the same paths (a shared mount) unless they are URIs (``s3://``, ``gs://``);
- ``RAYPIPE_REQUIRE_VERSION``: the cluster's raypipe must be this raypipe's version (the job stops with exit 2
  otherwise), and with ``pip`` the job installs it first (``pip: ["raypipe==0.1.0"]``, or a wheel's URL);
- the environment variables the spec names for its secrets (``password_env``, ``token_env`` ...) are NOT sent:
  a Ray job's runtime env is visible to anyone with the dashboard. Give them to the cluster's nodes.

Token authentication: the client sends ``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``) when ``RAY_AUTH_MODE=token``,
as ``ray job submit`` does.
"""
from __future__ import annotations

import asyncio
import json
import shlex
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from raypipe.errors import SpecError
from raypipe.runner import check_stage_options
from raypipe.spec import MqttSource, SqlSource, load_spec
from raypipe.version import __version__

REQUIRE_VERSION_ENV = "RAYPIPE_REQUIRE_VERSION"
SPEC_NAME = "pipeline.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_STOPPED = 130


@dataclass
class JobResult:
    """A finished Ray job of raypipe's: its id, Ray's status, the run's exit code and JSON summary."""

    submission_id: str
    status: str
    exit_code: int
    address: str
    summary: dict[str, Any] | None = None
    message: str = ""
    entrypoint: str = ""
    runtime_env: dict[str, Any] = field(default_factory=dict)


def entrypoint(*, only: str | None = None, until: str | None = None, force: str | None = None,
               run_key: str | None = None) -> str:
    """The job's shell command: ``raypipe run`` on the shipped spec, joining the cluster it runs on."""
    args = ["raypipe", "run", SPEC_NAME, "--address", "auto", "--no-serve", "--json"]
    for opt, value in (("--only", only), ("--until", until), ("--force", force), ("--run-key", run_key)):
        if value is not None:
            args += [opt, value]
    return shlex.join(args)


def shipped_spec(path: str | Path) -> dict[str, Any]:
    """The spec file as it is, but with every path it resolves made absolute (as :func:`load_spec` resolves them)."""
    spec = load_spec(path)  # validates: a bad spec fails here, before anything is sent
    raw = yaml.safe_load(Path(path).read_text())
    raw["storage"] = spec.storage
    src, raw_src = spec.data.source, (raw.get("data") or {}).get("source") or {}
    if "path" in raw_src:
        raw_src["path"] = src.path
    if isinstance(src, MqttSource) and "landing" in raw_src:
        raw_src["landing"] = src.landing
    if isinstance(src, SqlSource):
        raw_src["url"] = src.url
    schema = (raw.get("validate") or {}).get("schema")
    if isinstance(schema, str) and schema != "infer":
        raw["validate"]["schema"] = spec.validate_.schema_
    return raw


def runtime_env(spec_doc: dict[str, Any], folder: Path, pip: list[str] | None = None) -> dict[str, Any]:
    """The job's runtime env: a working dir holding only the spec, the required raypipe version, ``pip``."""
    (folder / SPEC_NAME).write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    env: dict[str, Any] = {"working_dir": str(folder), "env_vars": {REQUIRE_VERSION_ENV: __version__}}
    if pip:
        env["pip"] = list(pip)
    return env


def submit(spec: str | Path, *, address: str, only: str | None = None, until: str | None = None,
           force: str | None = None, run_key: str | None = None, pip: list[str] | None = None, wait: bool = True,
           echo: Callable[[str], None] = print) -> JobResult:
    """Submit a run (or one stage: ``only``) of ``spec`` as a Ray job to the cluster at ``address``.

    Args:
        address: the cluster's dashboard, ``http://head:8265``.
        pip: packages the job installs first (``["raypipe==0.1.0"]``): for a cluster without raypipe.
        wait: stream the job's output through ``echo`` and wait for its end; False: return once submitted.

    Returns:
        A :class:`JobResult`; ``exit_code`` is the run's own (0 ok, 2 spec, 3 data, 4 gate ...).
    """
    from ray.job_submission import JobSubmissionClient

    check_stage_options(force=force, until=until, only=only)  # here, not after a trip to the cluster
    doc = shipped_spec(spec)
    command = entrypoint(only=only, until=until, force=force, run_key=run_key)
    stage = only or (f"until-{until}" if until else "all")
    submission_id = f"raypipe-{doc['name']}-{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="raypipe-job-") as folder:
        env = runtime_env(doc, Path(folder), pip)
        try:
            client = JobSubmissionClient(address)
            client.submit_job(entrypoint=command, runtime_env=env, submission_id=submission_id,
                              metadata={"raypipe.pipeline": doc["name"], "raypipe.stage": stage,
                                        "raypipe.version": __version__})
        except (ConnectionError, RuntimeError) as exc:
            raise SpecError(f"--address {address}: cannot submit to the cluster's Jobs API: {exc}; check the "
                            "dashboard address (http://head:8265) and RAY_AUTH_TOKEN") from None
    result = JobResult(submission_id, "PENDING", 0, address, entrypoint=command, runtime_env=env)
    if not wait:
        return result
    output = _follow(client, submission_id, echo)
    info = client.get_job_info(submission_id)
    result.status, result.message = str(info.status.value), info.message or ""
    result.summary = _summary(output)
    if result.status == "SUCCEEDED":
        result.exit_code = 0
    elif result.status == "STOPPED":
        result.exit_code = EXIT_STOPPED
    else:  # the driver's own code; none when the job failed before it started (runtime env, entrypoint not found)
        result.exit_code = info.driver_exit_code if info.driver_exit_code not in (None, 0) else 1
    return result


def _follow(client: Any, submission_id: str, echo: Callable[[str], None]) -> str:
    """Stream the job's output until it ends; Ctrl-C or SIGTERM stops the job. Returns the last 64 KiB of output."""
    kept: list[str] = []

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            echo(chunk.rstrip("\n"))
            kept.append(chunk)
            while sum(map(len, kept)) > 65536 and len(kept) > 1:
                kept.pop(0)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # signal handlers: the main thread only
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        try:
            asyncio.run(tail())
        except RuntimeError as exc:  # the log stream broke off: the job's status still says how it ended
            echo(f"raypipe submit: the job's log stream ended early ({exc}); waiting for its status")
        while str(client.get_job_status(submission_id).value) not in TERMINAL:
            time.sleep(1.0)
    except KeyboardInterrupt:
        echo(f"raypipe submit: interrupted; stopping job {submission_id}")
        client.stop_job(submission_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and str(client.get_job_status(submission_id).value) not in TERMINAL:
            time.sleep(1.0)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return "".join(kept)


def _summary(output: str) -> dict[str, Any] | None:
    """The run's JSON summary: the last output line that parses as a JSON object with a run id."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"run_id"' in line:
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def check_required_version() -> None:
    """In a submitted job: stop with exit 2 when this raypipe is not the version that submitted it."""
    import os

    wanted = os.environ.get(REQUIRE_VERSION_ENV)
    if wanted and wanted != __version__:
        raise SpecError(f"this cluster runs raypipe {__version__}, but the job was submitted by raypipe {wanted}: "
                        f"install raypipe=={wanted} in the cluster's image, or submit with --pip raypipe=={wanted}")
