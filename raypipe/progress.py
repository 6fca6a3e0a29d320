"""Stage-by-stage progress: rich on a terminal, plain log lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console

_STYLE = {"ran": "green", "cached": "cyan", "failed": "bold red"}


class Progress:
    """Reports a run's stages as they start and finish.

    Args:
        stream: where to write (stderr by default, so ``--json`` keeps stdout clean).
        quiet: print nothing.
    """

    def __init__(self, stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._stages: list[str] = []
        self._t0 = time.perf_counter()

    def _print(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def start(self, pipeline: str, run_id: str, stages: list[str]) -> None:
        self._stages, self._t0 = stages, time.perf_counter()
        self._print(f"[bold]raypipe[/bold] run [bold]{pipeline}[/bold] ({run_id}): {' → '.join(stages)}")

    def _pos(self, stage: str) -> str:
        return f"[{self._stages.index(stage) + 1}/{len(self._stages)}]" if stage in self._stages else "[·]"

    def stage_start(self, stage: str) -> None:
        self._print(f"{self._pos(stage)} {stage} …")

    def stage_done(self, stage: str, status: str, seconds: float) -> None:
        style = _STYLE.get(status, "")
        took = f" in {seconds:.1f} s" if status == "ran" else ""
        self._print(f"{self._pos(stage)} {stage} [{style}]{status}[/{style}]{took}")

    def detail(self, msg: str) -> None:
        self._print(f"      {msg}")

    def finish(self, status: str) -> None:
        style = "green" if status == "ok" else "bold red"
        self._print(f"run [{style}]{status}[/{style}] after {time.perf_counter() - self._t0:.1f} s")
