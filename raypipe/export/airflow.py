"""The pipeline as an Airflow 3 DAG: ``raypipe export airflow SPEC -o dags/<name>.py``.

The DAG has one task per stage (ingest → validate → features → train → evaluate → register),
each depending on the one before. A task (``RaypipeStage``, a ``BashOperator``) runs one stage with the
raypipe command: ``raypipe run SPEC --only STAGE`` on the Airflow worker (``mode="local"``,
where ``ray.address`` in the spec says which Ray the stage joins), or ``raypipe submit SPEC
--only STAGE`` as a Ray job on a cluster (``mode="ray-job"``). The stages hand over through
the pipeline's storage and the runner's fingerprint cache, so a task finds its inputs where
the previous task left them, and a DAG run whose spec and data did not change finds every
stage cached.

Why the file looks the way it does:

- It imports neither ray nor raypipe: the scheduler parses DAG files often and in processes
  that should not need raypipe's dependencies; only the workers run the raypipe command.
- ``max_active_runs=1`` and ``catchup=False``: the runs of one pipeline share its storage.
- Retries, in two layers. The runner retries a stage's transient failures inside the task
  (``runner.retries``: connection errors, a lost Ray worker or node, a full object store),
  without a new process. Airflow's task retries, set from the same ``runner.retries``
  (``count`` → ``retries``, ``backoff_s`` → ``retry_delay``, doubling → ``retry_exponential_backoff=2.0``,
  Airflow adds up to 100% jitter), rerun the whole task when the process failed: the worker
  was lost or killed, Ray could not be reached, or the runner gave up (exit 1). A rerun
  resumes from the cache. Exit 2 (a bad spec, an earlier stage missing), 3 (bad data) and
  4 (a failed gate) fail the task at once (``AirflowFailException``): a retry would fail the
  same way. ``retries=`` overrides Airflow's count.
- Secrets stay out: the file holds the spec's path, the command and the schedule; tokens
  (``RAY_AUTH_TOKEN``), cloud credentials and the like come from the worker's environment.
- The spec's sha256 is in the DAG's documentation: compare it with ``sha256sum SPEC`` to tell
  whether the DAG was exported from the spec the workers now read.

Written for Airflow 3 (``airflow.sdk``, the standard provider's ``BashOperator``; tested with
the version ``scripts/airflow-venv.sh`` pins, where ``retry_exponential_backoff`` is a multiplier).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jinja2

from raypipe.errors import SpecError
from raypipe.runner import STAGE_NAMES
from raypipe.spec import Spec, load_spec, no_secret_in_url
from raypipe.version import __version__

__all__ = ["AirflowExport", "MODES", "export_airflow", "render_dag"]

MODES = ("local", "ray-job")
START_DATE = dt.date(2025, 1, 1)  # fixed, so that exporting twice writes the same file; catchup is off
BACKOFF_MULTIPLIER = 2.0  # runner.retries.backoff_s doubles before each next retry
# The DAG run's id reaches each task as an environment variable (Airflow fills in the template), never
# spliced into the shell command: a manually triggered run may carry any id.
RUN_KEY_ENV = {"RAYPIPE_RUN_KEY": "{{ run_id }}"}
RUN_KEY_ARG = '--run-key "$RAYPIPE_RUN_KEY"'
FINAL_EXIT_CODES = {  # raypipe's exit codes (raypipe.errors) after which a retry would fail the same way
    2: "a bad spec, or an earlier stage missing",
    3: "the data failed validation",
    4: "the evaluation gate failed (the version is registered as rejected)",
}


@dataclass
class AirflowExport:
    path: str
    dag_id: str
    tasks: list[str]
    schedule: str | None
    mode: str
    spec_sha256: str
    retries: int


def default_command() -> str:
    """This interpreter's raypipe: right for a worker on this machine, with this environment."""
    return f"{shlex.quote(sys.executable)} -m raypipe"


def stage_command(raypipe: str, mode: str, spec_path: str, stage: str, address: str | None = None) -> str:
    """The shell command of one stage's task."""
    if mode == "local":
        return f"{raypipe} run {shlex.quote(spec_path)} --only {stage} {RUN_KEY_ARG} --json"
    where = f" --address {shlex.quote(address)}" if address else ""
    return f"{raypipe} submit {shlex.quote(spec_path)} --only {stage} {RUN_KEY_ARG}{where} --json"


def render_dag(
    spec: Spec,
    spec_path: str,
    spec_sha256: str,
    *,
    schedule: str | None = "@daily",
    mode: Literal["local", "ray-job"] = "local",
    raypipe: str | None = None,
    address: str | None = None,
    retries: int | None = None,
) -> str:
    """The DAG file's text for ``spec`` (read from ``spec_path``, whose bytes hash to ``spec_sha256``).

    Args:
        schedule: an Airflow schedule (a preset such as ``@daily``, or cron); None: triggered only.
        mode: ``local`` runs each stage on the worker; ``ray-job`` submits it to a Ray cluster.
        raypipe: the raypipe command on the workers (default: this interpreter's, ``python -m raypipe``).
        address: ``ray-job`` mode: the cluster's job API (``http://head:8265``); None: the worker's
            ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``.
        retries: Airflow's task retries (default: ``runner.retries.count``).
    """
    if mode not in MODES:
        raise SpecError(f"--mode {mode!r} is not a mode; use one of {list(MODES)}")
    if address and mode != "ray-job":
        raise SpecError("--address names the Ray cluster that ray-job mode submits to; add --mode ray-job, or "
                        "set ray.address in the spec for local mode")
    if address:
        try:
            no_secret_in_url(address, "give the token to the workers as RAY_AUTH_TOKEN")
        except ValueError as exc:
            raise SpecError(f"--address: {exc}") from None
    if retries is not None and retries < 0:
        raise SpecError(f"--retries {retries}: give a count of 0 or more")
    command = raypipe or default_command()
    count = spec.runner.retries.count if retries is None else retries
    commands = [(stage, stage_command(command, mode, spec_path, stage, address)) for stage in STAGE_NAMES]
    env = jinja2.Environment(loader=jinja2.PackageLoader("raypipe", "templates"), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["pyrepr"] = repr
    env.filters["docstring"] = _docstring
    return env.get_template("airflow_dag.py.j2").render(
        name=spec.name, dag_id=spec.name, stages=list(STAGE_NAMES), commands=commands, mode=mode,
        spec_path=spec_path, spec_sha256=spec_sha256, command=command, raypipe_version=__version__,
        description=f"raypipe pipeline {spec.name}: {' -> '.join(STAGE_NAMES)}",
        schedule=schedule or None, start_date=START_DATE, tags=["raypipe", spec.name],
        retries=count, retry_delay_s=float(spec.runner.retries.backoff_s), backoff_multiplier=BACKOFF_MULTIPLIER,
        run_key_env=RUN_KEY_ENV, final_exit_codes=FINAL_EXIT_CODES, doc_md=_doc_md(spec, spec_path, spec_sha256, mode, command, count, address),
    )


def export_airflow(
    spec_path: str | Path,
    output: str | Path | None = None,
    *,
    schedule: str | None = "@daily",
    mode: Literal["local", "ray-job"] = "local",
    raypipe: str | None = None,
    address: str | None = None,
    retries: int | None = None,
    worker_spec_path: str | None = None,
) -> AirflowExport:
    """Write the DAG of the spec at ``spec_path`` to ``output`` (default ``<name>.py``); see :func:`render_dag`.

    ``worker_spec_path`` is where the workers find the spec, when not at this absolute path.
    """
    path = Path(spec_path)
    spec = load_spec(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    text = render_dag(spec, worker_spec_path or str(path.resolve()), digest, schedule=schedule, mode=mode,
                      raypipe=raypipe, address=address, retries=retries)
    out = Path(output) if output else Path(f"{spec.name}.py")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return AirflowExport(str(out), spec.name, list(STAGE_NAMES), schedule or None, mode, digest,
                         spec.runner.retries.count if retries is None else retries)


def _doc_md(spec: Spec, spec_path: str, digest: str, mode: str, command: str, retries: int, address: str | None) -> str:
    r = spec.runner.retries
    cluster = "the cluster in the worker's RAY_API_SERVER_ADDRESS or RAY_ADDRESS"
    where = ("each stage runs on the Airflow worker and joins the Ray that `ray.address` in the spec names "
             "(none: a local Ray per task)") if mode == "local" else (
             f"each stage is submitted as a Ray job to {address or cluster}; "
             "the token comes from the worker's RAY_AUTH_TOKEN or ~/.ray/auth_token (RAY_AUTH_MODE=token); "
             "stopping the task stops the job")
    lines = [
        f"Airflow DAG of the raypipe pipeline `{spec.name}`: one task per stage.",
        "",
        f"- spec: `{spec_path}`",
        f"- spec sha256: `{digest}` (exported with raypipe {__version__}; export again after changing the spec)",
        f"- mode: {mode}: {where}",
        f"- stages: {' → '.join(STAGE_NAMES)}; each task runs one stage, later stages read earlier ones' "
        "artifacts from the pipeline's storage; an unchanged stage is cached",
        "- the DAG run's id is each stage's `--run-key`: a source that cannot be hashed (SQL or HTTP without "
        "`snapshot`) is then read once per DAG run, not once per task",
        "",
        "**Retries.** Inside a task, the raypipe runner retries a stage's transient failures "
        f"(`runner.retries`: {r.count} tries after the first, {r.backoff_s:g} s doubling): connection errors, "
        "a lost Ray worker or node, a full object store. Airflow's retries "
        f"({retries}, from {r.backoff_s:g} s, doubling with jitter) rerun the whole task when its process failed "
        "or the runner gave up (exit 1); the rerun resumes from the cache. Exit 2 (spec, or an earlier stage "
        "missing), 3 (data) and 4 (gate) fail the task at once: a retry would fail the same way.",
        "",
        f"Each task runs `{stage_command(command, mode, spec_path, 'STAGE', address)}`.",
    ]
    return "\n".join(lines) + "\n"


def _docstring(text: str) -> str:
    """``text`` as a Python docstring literal that reads as written (its backslashes and quotes escaped)."""
    return '"""' + text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') + '"""'
