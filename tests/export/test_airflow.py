"""``raypipe export airflow``: the DAG file read statically, then run by a real Airflow 3.

The real runs use the Airflow that ``scripts/airflow-venv.sh`` installs into ``.airflow-venv``
(a venv of its own: Airflow's pins must not change the project's environment). Each task is a
``raypipe run --only STAGE`` process; it joins the session's Ray (``ray.address`` in the spec)
instead of starting its own, which would cost ~10 s per task here.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raypipe.errors import SpecError
from raypipe.export.airflow import export_airflow
from raypipe.runner import STAGE_NAMES
from tests.conftest import small_spec

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VENV = Path(os.environ.get("RAYPIPE_AIRFLOW_VENV", ROOT / ".airflow-venv"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"


def _spec_file(tmp_path: Path, name: str = "t-airflow", rows: int = 3000, **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(small_spec(tmp_path / "store", name, rows, **sections)))
    return path


def _dag_call(tree: ast.Module) -> ast.Call:
    """The ``DAG(...)`` of the file's ``with`` statement."""
    withs = [n for n in tree.body if isinstance(n, ast.With)]
    assert len(withs) == 1
    call = withs[0].items[0].context_expr
    assert isinstance(call, ast.Call) and call.func.id == "DAG"
    return call


def _kwargs(call: ast.Call) -> dict:
    return {k.arg: k.value for k in call.keywords}


# --- the file, read statically -----------------------------------------------------------
def test_the_dag_file_imports_airflow_only(tmp_path):
    out = export_airflow(_spec_file(tmp_path), tmp_path / "dags" / "p.py")
    tree = ast.parse(Path(out.path).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    tops = {m.split(".")[0] for m in imported}
    assert "ray" not in tops and "raypipe" not in tops
    assert tops <= {"__future__", "datetime", "airflow"}, tops
    assert {"airflow.sdk", "airflow.sdk.exceptions", "airflow.providers.standard.operators.bash"} <= imported


def test_one_task_per_stage_in_order_with_retries_schedule_tags_and_the_spec_hash(tmp_path):
    spec = _spec_file(tmp_path, runner={"retries": {"count": 3, "backoff_s": 7.5}})
    out = export_airflow(spec, tmp_path / "p.py", schedule="0 4 * * *")
    text = Path(out.path).read_text()
    tree = ast.parse(text)
    digest = hashlib.sha256(spec.read_bytes()).hexdigest()
    assert out.spec_sha256 == digest and out.tasks == list(STAGE_NAMES) and out.retries == 3

    kw = _kwargs(_dag_call(tree))
    assert ast.literal_eval(kw["dag_id"]) == "t-airflow"
    assert ast.literal_eval(kw["schedule"]) == "0 4 * * *"
    assert ast.literal_eval(kw["catchup"]) is False and ast.literal_eval(kw["max_active_runs"]) == 1
    assert ast.literal_eval(kw["tags"]) == ["raypipe", "t-airflow"]
    assert isinstance(kw["doc_md"], ast.Name) and kw["doc_md"].id == "__doc__"
    doc = ast.get_docstring(tree)
    assert digest in doc and "runner.retries" in doc and "Airflow's retries" in doc
    args = {ast.literal_eval(k): v for k, v in zip(kw["default_args"].keys, kw["default_args"].values)}
    assert ast.literal_eval(args["retries"]) == 3
    delay = args["retry_delay"]
    assert ast.unparse(delay.func) == "datetime.timedelta" and ast.literal_eval(delay.keywords[0].value) == 7.5
    assert ast.literal_eval(args["retry_exponential_backoff"]) == 2.0

    commands = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    assert list(commands) == list(STAGE_NAMES)
    for stage, cmd in commands.items():
        assert cmd == (f"{sys.executable} -m raypipe run {spec.resolve()} --only {stage} "
                       '--run-key "$RAYPIPE_RUN_KEY" --json')
    body = tree.body[-1].body
    tasks = {n.targets[0].id: _kwargs(n.value) for n in body if isinstance(n, ast.Assign)}
    assert list(tasks) == list(STAGE_NAMES)
    assert all(ast.literal_eval(kw["task_id"]) == name for name, kw in tasks.items())
    run_key = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "RUN_KEY")
    assert run_key == {"RAYPIPE_RUN_KEY": "{{ run_id }}"}  # one DAG run's stages share its id, through the environment
    assert all(kw["env"].id == "RUN_KEY" and ast.literal_eval(kw["append_env"]) is True for kw in tasks.values())
    assert all(n.value.func.id == "RaypipeStage" for n in body if isinstance(n, ast.Assign))
    final = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and n.targets[0].id == "FINAL_EXIT_CODES")
    assert sorted(final) == [2, 3, 4]  # spec, data, gate: failed at once, never retried by Airflow
    assert ast.unparse(body[-1]) == " >> ".join(STAGE_NAMES)  # each stage after the one before
    assert export_airflow(spec, tmp_path / "again.py", schedule="0 4 * * *") and \
        (tmp_path / "again.py").read_text() == text  # the same spec exports the same file


def test_ray_job_mode_submits_each_stage_and_an_override_command(tmp_path):
    spec = _spec_file(tmp_path)
    out = export_airflow(spec, tmp_path / "p.py", mode="ray-job", address="http://head:8265", raypipe="raypipe",
                         schedule=None, retries=0, worker_spec_path="/opt/specs/p.yaml")
    tree = ast.parse(Path(out.path).read_text())
    commands = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    assert commands["train"] == 'raypipe submit /opt/specs/p.yaml --only train --run-key "$RAYPIPE_RUN_KEY" ' \
                                '--address http://head:8265 --json'
    kw = _kwargs(_dag_call(tree))
    assert ast.literal_eval(kw["schedule"]) is None
    args = {ast.literal_eval(k): v for k, v in zip(kw["default_args"].keys, kw["default_args"].values)}
    assert ast.literal_eval(args["retries"]) == 0


def test_a_path_with_spaces_and_quotes_is_quoted_for_the_shell(tmp_path):
    odd = tmp_path / "my specs" / "it's"
    odd.mkdir(parents=True)
    out = export_airflow(_spec_file(odd), tmp_path / "p.py")
    tree = ast.parse(Path(out.path).read_text())
    commands = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    words = subprocess.run(["bash", "-c", f"set -- {commands['ingest']}; printf '%s\\n' \"$@\""],  # as the task's bash splits it
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert str((odd / "t-airflow.yaml").resolve()) in words


def test_no_environment_value_reaches_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-5f1e2d-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-9c8b7a-secret")
    out = export_airflow(_spec_file(tmp_path), tmp_path / "p.py", mode="ray-job", address="http://head:8265")
    text = Path(out.path).read_text()
    assert "tok-5f1e2d" not in text and "aws-9c8b7a" not in text


@pytest.mark.parametrize("kw, found", [
    ({"mode": "kubernetes"}, "is not a mode"),
    ({"address": "http://head:8265"}, "--mode ray-job"),
    ({"mode": "ray-job", "address": "http://me:pw@head:8265"}, "credentials"),
    ({"retries": -1}, "0 or more"),
])
def test_wrong_options_are_refused_before_writing(tmp_path, kw, found):
    with pytest.raises(SpecError, match=found):
        export_airflow(_spec_file(tmp_path), tmp_path / "p.py", **kw)
    assert not (tmp_path / "p.py").exists()


def test_the_cli_writes_the_dag(tmp_path):
    spec = _spec_file(tmp_path)
    out = subprocess.run([sys.executable, "-m", "raypipe", "export", "airflow", str(spec), "-o",
                          str(tmp_path / "dags" / "p.py"), "--schedule", "none", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["dag_id"] == "t-airflow" and summary["schedule"] is None and summary["mode"] == "local"
    assert (tmp_path / "dags" / "p.py").is_file()
    bad = subprocess.run([sys.executable, "-m", "raypipe", "export", "airflow", str(spec), "--mode", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a mode" in bad.stderr


# --- a real Airflow 3 ---------------------------------------------------------------------
def _airflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(AIRFLOW), *args], env=env, cwd=env["AIRFLOW_HOME"], capture_output=True, text=True,
                          timeout=timeout)


def _json(out: subprocess.CompletedProcess) -> list:
    """The JSON of an ``-o json`` command (Airflow prints its warnings on stdout too, before it)."""
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert lines, f"no JSON in the output of airflow: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> dict[str, str]:
    return airflow_home(tmp_path_factory)


def airflow_home(tmp_path_factory) -> dict[str, str]:
    """The environment of an Airflow with its own home, dags folder and sqlite database (migrated)."""
    if not AIRFLOW.is_file():
        pytest.fail(f"no Airflow at {AIRFLOW}: run scripts/airflow-venv.sh (`make test` does) to install it into a "
                    "venv of its own, or point RAYPIPE_AIRFLOW_VENV at one")
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    # the Airflow processes cannot import raypipe (no PYTHONPATH): the DAG file must parse without it
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "PYTHONPATH"}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}")
    migrate = _airflow(env, "db", "migrate")
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    return env


def _dag_test(env: dict[str, str], dag_id: str, storage: Path) -> tuple[dict[str, str], dict[str, str], float]:
    """``airflow dags test``: each task's state, each stage's status in the run manifest its task wrote, seconds."""
    before = set((storage / "runs").glob("*")) if (storage / "runs").is_dir() else set()
    t0 = time.monotonic()
    test = _airflow(env, "dags", "test", dag_id, timeout=600)
    seconds = time.monotonic() - t0
    assert test.returncode == 0, test.stdout[-4000:] + test.stderr[-4000:]
    run = max(_json(_airflow(env, "dags", "list-runs", dag_id, "-o", "json")), key=lambda r: r["start_date"])
    states = {t["task_id"]: t["state"]
              for t in _json(_airflow(env, "tasks", "states-for-dag-run", dag_id, run["run_id"], "-o", "json"))}
    stages = {}
    for folder in set((storage / "runs").glob("*")) - before:
        manifest = json.loads((folder / "manifest.json").read_text())
        record = next(s for s in manifest["stages"] if s["name"] == manifest["only"])
        stages[manifest["only"]] = record["status"]
    return states, stages, seconds


@pytest.mark.airflow
@pytest.mark.timeout(900)
def test_airflow_runs_the_exported_dag_then_finds_every_stage_cached(airflow, ray_session, tmp_path):
    from raypipe.registry import Registry

    address = ray_session.get_runtime_context().gcs_address  # each task joins the session's Ray
    spec = _spec_file(tmp_path, "t-airflow-run", rows=2000, ray={"address": address},
                      runner={"retries": {"count": 1, "backoff_s": 1.0}})
    storage = tmp_path / "store"
    # this checkout's raypipe for the tasks (the Airflow processes themselves never import it)
    command = f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m raypipe"
    dags = Path(airflow["AIRFLOW__CORE__DAGS_FOLDER"])
    out = export_airflow(spec, dags / "t_airflow_run.py", raypipe=command, schedule=None)

    # the check can fail: a DAG file that imports ray does not parse in Airflow's venv
    (dags / "imports_ray.py").write_text("from airflow.sdk import DAG\nimport ray\n")
    errors = _airflow(airflow, "dags", "list-import-errors", "--local", "-o", "json")
    assert [Path(e["filepath"]).name for e in _json(errors)] == ["imports_ray.py"], errors.stdout[-3000:]
    assert "No module named 'ray'" in _json(errors)[0]["error"]
    (dags / "imports_ray.py").unlink()
    errors = _airflow(airflow, "dags", "list-import-errors", "--local", "-o", "json")
    assert errors.returncode == 0 and _json(errors) == [], errors.stdout[-3000:]
    assert out.dag_id in {d["dag_id"] for d in _json(_airflow(airflow, "dags", "list", "--local", "-o", "json"))}

    states, stages, first = _dag_test(airflow, out.dag_id, storage)
    assert states == {stage: "success" for stage in STAGE_NAMES}
    assert stages == {stage: "ran" for stage in STAGE_NAMES}
    assert Registry(str(storage), "t-airflow-run").versions() == [1]

    states, stages, second = _dag_test(airflow, out.dag_id, storage)
    assert states == {stage: "success" for stage in STAGE_NAMES}
    assert stages == {stage: "cached" for stage in STAGE_NAMES}
    assert Registry(str(storage), "t-airflow-run").versions() == [1]  # nothing new to register
    print(f"airflow dags test: {first:.0f} s for the first run, {second:.0f} s for the cached one (figures, not checks)")


@pytest.mark.airflow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("code, tries, why", [(4, 1, "the evaluation gate failed"), (1, 3, None)])
def test_exit_2_3_4_fail_at_once_and_other_failures_are_retried(airflow, tmp_path, code, tries, why):
    """A stand-in for raypipe that exits ``code``: Airflow's retries (runner.retries.count = 2) run for
    an unexpected failure only; a gate, data or spec failure would fail the same way again."""
    spec = _spec_file(tmp_path, f"t-airflow-exit{code}", runner={"retries": {"count": 2, "backoff_s": 0.5}})
    dags = Path(airflow["AIRFLOW__CORE__DAGS_FOLDER"])
    out = export_airflow(spec, dags / f"t_airflow_exit{code}.py", raypipe=f"sh -c 'exit {code}'", schedule=None)
    test = _airflow(airflow, "dags", "test", out.dag_id, timeout=300)
    log = test.stdout + test.stderr
    assert test.returncode != 0
    assert log.count("[DAG TEST] starting task_id=ingest ") == tries, log[-4000:]
    assert "starting task_id=validate " not in log  # nothing after a failed stage
    if why:
        assert f"raypipe exited {code}: {why}" in log
