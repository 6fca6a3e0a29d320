"""The public API facade."""
from __future__ import annotations

import pytest

import raypipe


def test_public_serve_function_survives_imports_of_the_serve_subpackage() -> None:
    import subprocess
    import sys

    code = "import raypipe, raypipe.serve.batch, raypipe.serve.deploy; print(callable(raypipe.serve))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_public_monitor_function_survives_imports_of_the_monitor_subpackage() -> None:
    import subprocess
    import sys

    code = ("import raypipe, raypipe.monitor.check, raypipe.monitor.window; "
            "print(callable(raypipe.monitor), 'monitor' in raypipe.__all__, raypipe.DriftDetected.exit_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True 5"


def test_monitoring_commands_say_they_are_not_built_for_policies(tmp_path):
    spec = {"name": "rl", "storage": str(tmp_path), "data": {"task": "reinforcement", "env": {"id": "CartPole-v1"}},
            "model": {"kind": "rllib:PPO"}, "train": {"iterations": 1}}
    for call in (lambda: raypipe.monitor(spec, input="x.parquet"), lambda: raypipe.feedback(spec, "labels.csv")):
        with pytest.raises(raypipe.SpecError, match="not built for policies"):
            call()
