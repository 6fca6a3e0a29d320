"""Count Ray Data executions: which stage started each, what for, and how long it took.

Every Ray Data execution (a ``materialize``, ``to_pandas``, ``take_all``, ``count`` that is
not answered from metadata, ...) starts a streaming executor with a fixed cost of its own:
about 0.2-0.5 s on a 2-core machine before a task runs, and it reads its input again. A
pipeline stage that does three passes where one would do pays that three times; fewer
executions is the lever for small data (``docs/architecture.md``, "Ray Data executions").

The counter is Ray Data's own hook, an ``ExecutionCallback`` class in
``DataContext.custom_execution_callback_classes``, instantiated by the planner for each
execution; no Ray internals are patched. A dataset copies the driver's ``DataContext``
when it is created, so :func:`install` must run before the datasets to be counted are
built (``recording()`` installs it). Each execution is attributed to the pipeline stage
whose code started it: the first ``raypipe.<stage>`` module on the calling stack.

    with recording() as seen:
        raypipe.run(spec)
    per_stage(seen)  # {"ingest": 1, "validate": 1, ...}
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ray.data._internal.execution.execution_callback import ExecutionCallback

STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")


@dataclass
class Execution:
    """One Ray Data execution as the driver saw it."""

    stage: str  # the pipeline stage whose code started it ("" outside a stage)
    caller: str  # the innermost raypipe frame that started it, "module:function:line"
    plan: str  # Ray's operator chain, e.g. "Input -> TaskPoolMapOperator[ReadParquet->MapBatches(f)]"
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None  # None while running, or if it failed


_lock = threading.Lock()
_recorders: list[list[Execution]] = []


def _caller() -> tuple[str, str]:
    """(stage, caller) of the code that started the execution running in this thread."""
    frame = sys._getframe(2)
    stage, caller = "", ""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("raypipe.") and module != __name__:
            if not caller:
                caller = f"{module}:{frame.f_code.co_name}:{frame.f_lineno}"
            part = module.split(".")[1]
            if part in STAGES and not stage:
                stage = part
        frame = frame.f_back
    return stage, caller


class RecordExecution(ExecutionCallback):
    """Appends an :class:`Execution` to every open :func:`recording` (a no-op without one).

    A module-level class: the ``DataContext`` holding it is pickled into Ray tasks, which
    import it by name.
    """

    def before_execution_starts(self, executor: Any) -> None:
        with _lock:
            if not _recorders:
                return
        stage, caller = _caller()
        dag = getattr(executor, "_topology", None) or {}
        self._record = Execution(stage, caller, " -> ".join(op.name for op in dag))
        with _lock:
            for seen in _recorders:
                seen.append(self._record)

    def after_execution_succeeds(self, executor: Any) -> None:
        record = getattr(self, "_record", None)
        if record is not None:
            record.seconds = time.perf_counter() - record.started


def install() -> None:
    """Register the counting callback in this process's current ``DataContext`` (idempotent).

    Datasets created from then on carry it; it records only while a :func:`recording` is open.
    """
    import ray.data

    classes = ray.data.DataContext.get_current().custom_execution_callback_classes
    if RecordExecution not in classes:
        classes.append(RecordExecution)


@contextmanager
def recording() -> Iterator[list[Execution]]:
    """The Ray Data executions started in this process while the block runs (the list fills as they start)."""
    install()
    seen: list[Execution] = []
    with _lock:
        _recorders.append(seen)
    try:
        yield seen
    finally:
        with _lock:
            _recorders.remove(seen)


def per_stage(seen: list[Execution]) -> dict[str, int]:
    """Executions per pipeline stage, in pipeline order (stages without any left out)."""
    counts = Counter(e.stage or "other" for e in seen)
    return {s: counts[s] for s in (*STAGES, "other") if counts[s]}
