"""The raypipe error tree.

Every error carries the process exit code the CLI uses (see docs/architecture.md) and
also derives from the builtin a caller would naturally catch (``ValueError`` ...).
Messages say what is wrong, what was received, and how to fix it.
"""
from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound="RaypipeError")


class RaypipeError(Exception):
    """Base class of raypipe's errors.

    ``transient`` is true on an error that may pass if tried again (a refused connection, a timeout, a
    server's 5xx): ``runner.retries`` retries the stage then (see :mod:`raypipe.transient`).
    """

    exit_code: int = 1
    transient: bool = False


def transient(exc: "E") -> "E":
    """``exc``, marked as a failure that may pass if tried again."""
    exc.transient = True
    return exc


class SpecError(RaypipeError, ValueError):
    """The spec (or a command-line argument) is invalid. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)


class DataValidationError(RaypipeError, ValueError):
    """The input data failed validation. Exit code 3.

    Attributes:
        problems: every problem found, in one pass.
    """

    exit_code = 3

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"data validation failed with {len(self.problems)} problem(s):\n{lines}")


class UndecodableFileError(RaypipeError, ValueError):
    """A file of a folder-tree source (image or text) cannot be decoded. Exit code 3.

    The message names the file. Raised inside a Ray task, it reaches the caller wrapped
    in Ray's task error, whose text holds that message.
    """

    exit_code = 3


class GateFailed(RaypipeError):
    """The evaluation gate was not met: the model is registered as rejected. Exit code 4."""

    exit_code = 4

    def __init__(self, failures: list[str], version: int | None = None) -> None:
        self.failures = list(failures)
        self.version = version
        where = f" (version {version} registered as rejected)" if version is not None else ""
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"evaluation gate not passed{where}:\n{lines}")


class StageFailed(RaypipeError, RuntimeError):
    """A stage raised an unexpected error; the next run resumes from it. Exit code 1."""

    exit_code = 1


class ArtifactError(RaypipeError, RuntimeError):
    """An artifact is missing, incomplete or fails its integrity check."""

    exit_code = 1


class HttpSourceError(RaypipeError, RuntimeError):
    """An HTTP source failed: a bad status, a body that is not JSON, records not where expected. Exit code 1.

    Its message names the URL without its query string and masks the token and header / ``params`` values.
    """

    exit_code = 1


class RegistryError(RaypipeError, LookupError):
    """A model version or alias does not exist or cannot be used."""

    exit_code = 2


class DriftDetected(RaypipeError):
    """A monitored window drifted from the version's training data, or its performance fell below the
    gate's limits. Exit code 5.

    Attributes:
        report: the :class:`raypipe.monitor.check.MonitorReport` (its ``drifted`` columns, performance, report path).
    """

    exit_code = 5

    def __init__(self, report: object) -> None:
        self.report = report
        drifted = list(getattr(report, "drifted", []) or [])
        what = []
        if drifted:
            what.append(f"drifted columns: {', '.join(drifted)}")
        pred = getattr(report, "prediction_drift", None) or {}
        if pred.get("drifted"):
            what.append("the predictions drifted")
        if (getattr(report, "multivariate", None) or {}).get("drifted"):
            what.append(f"a domain classifier tells the window from the training rows "
                        f"(ROC-AUC {report.multivariate['auc']:.3f})")  # type: ignore[attr-defined]
        if getattr(report, "performance_below_gate", False):
            perf = report.performance  # type: ignore[attr-defined]
            failed = [c["check"] + f" (got {c['value']:.4f})" for c in perf.get("checks", []) if not c["passed"]]
            what.append(f"{perf.get('kind')} performance below the gate: {'; '.join(failed)}")
        where = getattr(report, "report_dir", "")
        super().__init__(f"{getattr(report, 'pipeline', '')} version {getattr(report, 'version', '')}: "
                         + "; ".join(what or ["drift detected"]) + (f" — report: {where}/drift.html" if where else ""))


class ExportError(SpecError):
    """The pipeline (features or model) has no form in the requested export format. Exit code 2."""

    def __init__(self, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot export this pipeline:\n{lines}", list(problems))
