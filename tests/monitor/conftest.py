"""Monitor tests that deploy apps on the session's Serve: each test deletes the applications it deployed,
even when it fails (a failed retrain test once left its app holding /canary and CPUs for the rest of the
session, so later Serve tests could neither deploy on that prefix nor get CPUs for Ray Data)."""
from __future__ import annotations

import pytest

from tests.conftest import delete_new_apps, serve_apps


@pytest.fixture(autouse=True)
def delete_apps_deployed_by_the_test():
    before = serve_apps()  # no Ray started for the tests that need none
    yield
    delete_new_apps(before)
