"""The public API facade."""
from __future__ import annotations

import pytest

import raypipe


def test_public_functions_survive_imports_of_submodules_with_their_names() -> None:
    """raypipe.serve, .monitor and .feedback are both public functions and submodules."""
    import subprocess
    import sys

    code = ("import raypipe, raypipe.serve.batch, raypipe.serve.deploy, raypipe.monitor.check, "
            "raypipe.monitor.window, raypipe.feedback; "
            "print([n for n in ('feedback', 'monitor', 'predict', 'retrain', 'run', 'serve') "
            "if not callable(getattr(raypipe, n))], raypipe.DriftDetected.exit_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 5"


def test_monitoring_commands_say_they_are_not_built_for_policies(tmp_path):
    spec = {"name": "rl", "storage": str(tmp_path), "data": {"task": "reinforcement", "env": {"id": "CartPole-v1"}},
            "model": {"kind": "rllib:PPO"}, "train": {"iterations": 1}}
    for call in (lambda: raypipe.monitor(spec, input="x.parquet"), lambda: raypipe.feedback(spec, "labels.csv")):
        with pytest.raises(raypipe.SpecError, match="not built for policies"):
            call()
