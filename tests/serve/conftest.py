"""Serve tests share the session's Serve instance; each test deletes the applications it deployed.

Every replica holds 0.5 of the session Ray's 4 logical CPUs: apps left running by earlier
tests would leave no CPU for the next test's Ray Data tasks, which then wait forever.
Applications made by module fixtures exist before the test starts and are left to them.
"""
from __future__ import annotations

import pytest

from tests.conftest import delete_new_apps, serve_apps


@pytest.fixture(autouse=True)
def delete_apps_deployed_by_the_test(ray_session):
    before = serve_apps()
    yield
    delete_new_apps(before)
