"""raypipe: one YAML spec -> a whole ML pipeline on Ray.

The public API mirrors the command line::

    import raypipe
    spec = raypipe.load_spec("pipeline.yaml")
    result = raypipe.run(spec)
    handle = raypipe.serve(spec)
"""
from __future__ import annotations

from raypipe.version import __version__  # noqa: F401

# The subpackage raypipe.serve is imported first: importing a subpackage binds its name on
# the parent, and that must happen before the public serve() function takes the name,
# or `import raypipe.serve.deploy` anywhere would replace raypipe.serve with a module.
import raypipe.serve as _serve_package  # noqa: E402,F401
import raypipe.monitor as _monitor_package  # noqa: E402,F401  (the same, for monitor())
import raypipe.feedback as _feedback_module  # noqa: E402,F401  (the same, for feedback())
from raypipe.api import feedback, monitor, predict, retrain, run, serve  # noqa: E402
from raypipe.errors import (  # noqa: E402
    ArtifactError,
    DataValidationError,
    DriftDetected,
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
    "DriftDetected",
    "GateFailed",
    "RaypipeError",
    "Registry",
    "RegistryError",
    "Spec",
    "SpecError",
    "StageFailed",
    "__version__",
    "feedback",
    "load_spec",
    "monitor",
    "predict",
    "retrain",
    "run",
    "serve",
]
