"""Which failures ``runner.retries`` tries again: the transient ones, never a bug, bad data or a failed gate.

Transient: a raypipe error marked so by the code that raised it (:func:`raypipe.errors.transient`: an HTTP
source's refused connection, timeout, 429 or 5xx; a database that did not answer), a connection error or a
timeout from anywhere (Python's own, httpx, botocore, google-api-core), a lost Ray node, worker, actor,
object or owner, a full object store or disk. Ray wraps a task's error (``RayTaskError.cause``) and Ray Train
a worker's: the whole chain of causes is looked at. Any other raypipe error (bad spec, bad data, failed gate)
is final, whatever it was caused by.
"""
from __future__ import annotations

import errno

from raypipe.errors import RaypipeError, StageFailed

# Ray's exceptions for a node, worker, actor or object lost, or resources out: named, so that this module
# needs no Ray import (a stage's error may come from a process that never started Ray).
RAY_TRANSIENT = frozenset({
    "NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectStoreFullError", "OutOfDiskError", "ActorDiedError", "ActorUnavailableError", "RaySystemError",
    "GetTimeoutError", "LocalRayletDiedError", "ReferenceCountingAssertionError", "RayChannelTimeoutError",
})
# Other libraries' connection errors and timeouts, by class name (each in its own package).
LIBRARY_TRANSIENT = frozenset({
    "TransportError", "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
    "RemoteProtocolError", "ReadError", "WriteError",  # httpx
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",  # botocore
    "ServiceUnavailable", "TooManyRequests",  # google.api_core
})
OS_TRANSIENT = frozenset({errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                          errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN})


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` may pass if tried again (the transient error's type and message), or None: it will not."""
    for link in _chain(exc):
        if isinstance(getattr(link, "cause", None), BaseException):
            continue  # Ray's copy of a task's error: its cause is next in the chain
        if isinstance(link, RaypipeError):
            if link.transient:
                return _describe(link)
            if isinstance(link, StageFailed):
                continue  # the runner's wrapper of an unexpected error: judged by what it wraps
            return None  # a raypipe error says what it is: final unless marked transient
        if isinstance(link, (KeyboardInterrupt, SystemExit, MemoryError)):
            return None
        if isinstance(link, (ConnectionError, TimeoutError)):
            return _describe(link)
        if isinstance(link, OSError) and link.errno in OS_TRANSIENT:
            return _describe(link)
        if isinstance(link, OSError) and "timed out" in str(link).lower():  # pyarrow's and fsspec's storage timeouts
            return _describe(link)
        names = {k.__name__ for k in type(link).__mro__}
        if names & RAY_TRANSIENT or names & LIBRARY_TRANSIENT:
            return _describe(link)
    return None


def _chain(exc: BaseException, limit: int = 20) -> list[BaseException]:
    """``exc`` and its causes: ``raise ... from``, Ray's ``cause``, an exception group's members. Not the implicit
    context: an error raised while handling a timeout is not a timeout."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < limit:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [c for c in (getattr(e, "cause", None), e.__cause__) if isinstance(c, BaseException)]
        todo += [c for c in getattr(e, "exceptions", ()) if isinstance(c, BaseException)]
    return seen


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
