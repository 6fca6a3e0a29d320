"""The Python API behind the command line: run, serve, predict."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from raypipe.progress import Progress
from raypipe.spec import Spec, demo_spec_path, load_spec


def as_spec(spec: Spec | str | Path | dict[str, Any] | None) -> Spec:
    """A validated spec from a Spec, a YAML path, a dict, or None (the built-in demo)."""
    if isinstance(spec, Spec):
        return spec
    if spec is None:
        return load_spec(demo_spec_path(), base_dir=Path.cwd())
    return load_spec(spec)


def run(spec: Spec | str | Path | dict[str, Any] | None = None, *, force: str | None = None, until: str | None = None,
        address: str | None = None, progress: Progress | None = None) -> Any:
    """Run a pipeline's stages (cached where possible).

    Returns:
        A :class:`raypipe.runner.RunResult`.

    Raises:
        SpecError, DataValidationError, GateFailed, StageFailed: see ``raypipe.errors``.
    """
    from raypipe.register.mlflow import check_available
    from raypipe.runner import Runner

    spec = as_spec(spec)
    check_available(spec)  # fail before the run, not at its end, when MLflow is configured but missing
    return Runner(spec, force=force, until=until, address=address, progress=progress).run()


def serve(spec: Spec | str | Path | dict[str, Any] | None = None, *, version: int | None = None, alias: str | None = None,
          address: str | None = None, port: int | None = None) -> Any:
    """Deploy a registered version (the champion by default) as a Ray Serve application.

    Returns:
        A :class:`raypipe.serve.deploy.Endpoint` with the URL and version.
    """
    from raypipe.serve.deploy import deploy

    return deploy(as_spec(spec), version=version, alias=alias, address=address, port=port)


def predict(spec: Spec | str | Path | dict[str, Any] | None, input: str, output: str, *, version: int | None = None,
            alias: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Batch inference with Ray Data: read ``input`` (parquet or csv), write predictions as parquet."""
    from raypipe.serve.batch import predict_files

    return predict_files(as_spec(spec), input, output, version=version, alias=alias, address=address)


def export(spec: Spec | str | Path | dict[str, Any] | None, *, output: str | None = None, format: str = "onnx",
           version: int | None = None, alias: str | None = None) -> dict[str, Any]:
    """Write a registered version (the champion by default) as one ONNX file; returns a summary.

    Raises:
        SpecError: an unknown format. ExportError: a feature or model without an ONNX form.
    """
    from dataclasses import asdict

    from raypipe.errors import SpecError
    from raypipe.export import export_onnx
    from raypipe.model.formats import trusted_factories
    from raypipe.model.predictor import Predictor
    from raypipe.registry import Registry

    if format != "onnx":
        raise SpecError(f"--format {format!r} is not supported; use --format onnx")
    s = as_spec(spec)
    reg = Registry.for_spec(s)
    v = reg.resolve(version=version, alias=alias)
    predictor = Predictor.from_version(reg.version_store(v), v, trusted_factories(s), manifest_sha256=reg.check_version(v))
    return asdict(export_onnx(predictor, output or f"{s.name}-v{v}.onnx", pipeline=s.name))
