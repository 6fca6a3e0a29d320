"""raypipe: one YAML spec -> a whole ML pipeline on Ray.

The public API mirrors the command line::

    import raypipe
    spec = raypipe.load_spec("pipeline.yaml")
    result = raypipe.run(spec)
    handle = raypipe.serve(spec)
"""
from __future__ import annotations

__version__ = "0.1.0"

from raypipe.api import predict, run, serve  # noqa: E402
from raypipe.errors import (  # noqa: E402
    ArtifactError,
    DataValidationError,
    GateFailed,
    RaypipeError,
    RegistryError,
    SpecError,
    StageFailed,
)
from raypipe.registry import Registry  # noqa: E402
from raypipe.spec import Spec, load_spec  # noqa: E402

__all__ = [
    "ArtifactError",
    "DataValidationError",
    "GateFailed",
    "RaypipeError",
    "Registry",
    "RegistryError",
    "Spec",
    "SpecError",
    "StageFailed",
    "__version__",
    "load_spec",
    "predict",
    "run",
    "serve",
]
