"""A test build of raypipe's replica whose ``check_health`` can be made to fail on demand.

It is raypipe's :class:`~raypipe.serve.app.ModelServer` with one addition: the replica's
health check also fails once a file named after its process id exists in ``flag_dir``.
Replicas import this module, so it lives in the importable ``tests`` package.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

from raypipe.serve.app import ModelServer


class FailOnDemand(ModelServer):
    def __init__(self, *, flag_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flag = Path(flag_dir) / str(os.getpid())

    def check_health(self) -> None:
        super().check_health()
        if self.flag.exists():
            raise RuntimeError(f"failing on demand: {self.flag} exists")


FailOnDemandDeployment = serve.deployment(serve.ingress()(FailOnDemand))
