"""Which failures runner.retries tries again (raypipe.transient): connection errors and timeouts, Ray's lost
nodes, workers and objects, marked raypipe errors; never bad data, a failed gate, a bad spec or a bug."""
from __future__ import annotations

import errno

import pytest
import ray.exceptions

from raypipe.errors import DataValidationError, GateFailed, HttpSourceError, SpecError, StageFailed, transient
from raypipe.transient import transient_reason


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    TimeoutError("read timed out"),
    OSError(errno.ECONNRESET, "Connection reset by peer"),
    OSError("When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION: timed out"),
    transient(HttpSourceError("GET http://api/x returned HTTP 503")),
    ray.exceptions.NodeDiedError("node 1a2b died"),
    ray.exceptions.ObjectStoreFullError("object store is full"),
    ray.exceptions.WorkerCrashedError(),
], ids=lambda e: type(e).__name__)
def test_transient_failures_are_named(exc):
    reason = transient_reason(exc)
    assert reason is not None and reason.startswith(type(exc).__name__)


@pytest.mark.parametrize("exc", [
    DataValidationError(["column 'amount': 12 values are not numbers"]),
    GateFailed(["roc_auc 0.61 < 0.8"]),
    SpecError("data.target: 'y' is not a column"),
    HttpSourceError("GET http://api/x returned HTTP 404"),  # not marked: a wrong URL stays wrong
    ValueError("could not convert string to float: 'n/a'"),
    KeyError("amount"),
    OSError(errno.ENOENT, "No such file or directory"),
], ids=lambda e: type(e).__name__)
def test_final_failures_are_not_retried(exc):
    assert transient_reason(exc) is None


def test_a_cause_decides_through_wrappers():
    # the runner's wrapper and a plain `raise ... from` are judged by what they wrap
    assert transient_reason(_raised_from(StageFailed("stage 'train' failed"), ConnectionResetError("reset")))
    assert transient_reason(_raised_from(RuntimeError("training failed"), ray.exceptions.NodeDiedError("gone")))
    # a data error caused by a timeout is still a data error
    assert transient_reason(_raised_from(DataValidationError(["bad"]), TimeoutError("slow"))) is None


def test_an_error_raised_while_handling_a_timeout_is_not_a_timeout():
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError:
            raise ValueError("bug in the handler")
    except ValueError as e:
        assert transient_reason(e) is None


def test_ray_task_errors_are_judged_by_their_cause(ray_session):
    @ray.remote(max_retries=0)
    def fails(kind: str) -> None:
        if kind == "http":
            raise transient(HttpSourceError("GET http://api/x failed after 1 attempt(s): ConnectError"))
        if kind == "data":
            raise DataValidationError(["column 'amount': 3 values are not numbers"])
        raise ConnectionResetError(errno.ECONNRESET, "reset by peer")

    for kind, expected in (("http", "HttpSourceError"), ("conn", "ConnectionResetError"), ("data", None)):
        with pytest.raises(Exception) as info:
            ray.get(fails.remote(kind))
        reason = transient_reason(info.value)
        assert (reason.split(":")[0] if reason else None) == expected, (kind, reason)
