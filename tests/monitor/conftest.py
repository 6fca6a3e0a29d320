"""Monitor tests that deploy apps on the session's Serve: each test deletes the applications it deployed,
even when it fails (a failed retrain test once left its app holding /canary and CPUs for the rest of the
session, so later Serve tests could neither deploy on that prefix nor get CPUs for Ray Data)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def delete_apps_deployed_by_the_test():
    import ray

    def apps() -> set[str]:
        if not ray.is_initialized():
            return set()
        try:
            from ray import serve

            return set(serve.status().applications)
        except Exception:  # Serve not started yet
            return set()

    before = apps()
    yield
    left = apps() - before
    if left:
        from ray import serve

        for name in left:
            serve.delete(name)
