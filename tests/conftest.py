"""Shared fixtures: one local Ray per test session, its own temp dir and ports.

Another Ray may run on the same host, so nothing here uses /tmp/ray or the default
ports. Ray start-up costs ~10 s on a 2-core machine, so it happens once.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from raypipe.runtime import free_port  # noqa: F401  (the tests import it from here)

# A developer's own `raypipe up` Ray (state in ~/.raypipe) must not be joined by the tests'
# runs and subprocesses: they get an empty raypipe home (tests/test_localray.py makes its own).
os.environ["RAYPIPE_HOME"] = tempfile.mkdtemp(prefix="rp-home-")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by the whole test session."""
    import ray

    from raypipe.runtime import connect

    temp_dir = tempfile.mkdtemp(prefix="rp-ray-", dir="/tmp")
    # 4 logical CPUs on 2 cores: Ray Train's 2 workers must leave room for Ray Data tasks.
    # Serve runs behind the HAProxy ingress, raypipe's default.
    # The dashboard on: tests of Tune over Ray Train need its state API. RAYPIPE_TEST_DASHBOARD=0 runs
    # a module without it, as `ray.dashboard: auto` starts most runs (e.g. the metrics tests).
    connect(num_cpus=4, temp_dir=temp_dir, ingress="haproxy", log_to_driver=True,  # workers' output in pytest's report
            dashboard=os.environ.get("RAYPIPE_TEST_DASHBOARD", "1") != "0")
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture
def tmp_storage(tmp_path: Path) -> Path:
    return tmp_path / "store"


def small_spec(storage: Path, name: str = "t-fraud", rows: int = 3000, **sections) -> dict:
    """A fast pipeline spec on the built-in data (sklearn model unless overridden)."""
    spec = {
        "name": name,
        "storage": str(storage),
        "data": {
            "source": {"type": "builtin", "name": "transactions", "rows": rows, "seed": 3},
            "target": "is_fraud",
            "id_columns": ["transaction_id"],
        },
        "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 300}},
        "evaluate": {"gate": {"min": {"roc_auc": 0.6}}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def statuses(result) -> dict:
    return {s["name"]: s["status"] for s in result.stages}


def champion_predictor(storage: Path, name: str, trusted: tuple[str, ...] = ()):
    """The Predictor of pipeline ``name``'s champion version in ``storage`` (``trusted``: user factories)."""
    from raypipe.model.predictor import Predictor
    from raypipe.registry import Registry

    reg = Registry(str(storage), name)
    return Predictor.from_version(reg.version_store(reg.alias("champion")), trusted=trusted)


def serve_apps() -> set[str]:
    """The Serve applications of this process's Ray (none before Ray or Serve has started)."""
    import ray

    if not ray.is_initialized():
        return set()
    from ray import serve

    try:
        return set(serve.status().applications)
    except Exception:  # Serve not started yet
        return set()


def delete_new_apps(before: set[str]) -> None:
    """Delete the Serve applications deployed since ``before`` was taken."""
    from ray import serve

    for name in serve_apps() - before:
        serve.delete(name)
