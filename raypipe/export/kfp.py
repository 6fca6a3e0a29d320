"""The pipeline as a Kubeflow Pipelines (KFP v2) pipeline: one task per stage, in stage order.

``raypipe export kfp SPEC -o pipeline.yaml`` compiles it with the ``kfp`` SDK
(``kfp.compiler.Compiler``); upload the YAML to KFP or run it with ``kfp.Client``. Two modes:

- ``container`` (default): each task runs ``raypipe run SPEC --only STAGE --no-serve --json``
  in the image. The task is a *lightweight Python component* whose body starts that command
  with ``sys.executable`` and fails on a non-zero exit code, so the same compiled YAML runs
  on a cluster (base image = the raypipe image) and locally with KFP's
  ``kfp.local.SubprocessRunner`` (which runs only lightweight Python components, not
  container components).
- ``rayjob``: each task creates a KubeRay ``RayJob`` (``ray.io/v1``) for its stage through
  the ``kubernetes`` client and polls it until ``jobStatus`` is SUCCEEDED (or fails the task
  on FAILED/STOPPED). The RayJob is built at export time by
  :func:`raypipe.export.kuberay.rayjob_manifest` and embedded in the pipeline as a constant,
  so what a cluster will receive can be read (and checked) in the compiled YAML.

Choices, and why they are safe:

- **The spec is passed by path inside the image** (pipeline parameter ``spec``), not embedded:
  its relative paths (``storage: ./.raypipe``, data files, a schema file) then resolve from its
  folder exactly as for ``raypipe run``, and a spec's secrets (a SQL URL with a password) do not
  end up in a pipeline definition that KFP stores and shows. To catch an image whose spec is
  not the exported one, the pipeline carries the spec's sha256 (parameter ``spec_sha256``,
  empty disables the check) and each task compares it before running.
- **KFP's own cache is off** for every task: a task's inputs (spec path, stage) do not change
  when the data does, so KFP would skip a stage that must run. raypipe's fingerprints decide
  what is reused; a stage whose artifact is complete is a cache hit inside the task.
- Stages are ordered with ``.after()``: they hand artifacts forward through the spec's
  ``storage``, which every task must share (an object store, or a ReadWriteMany volume).

Needs ``pip install 'raypipe[kfp]'`` where the export runs, and an image with raypipe (and
kfp, or network access for KFP's usual ``pip install kfp`` at task start) where it runs.
"""
# No `from __future__ import annotations`: KFP reads the pipeline functions' parameter types
# from their real annotations.
import hashlib
import json
from pathlib import Path
from typing import Any

from raypipe.errors import ExportError
from raypipe.export.kfp_components import raypipe_rayjob, raypipe_stage
from raypipe.export.kuberay import k8s_name, rayjob_manifest

__all__ = ["MODES", "export_kfp"]

MODES = ("container", "rayjob")
DEFAULT_IMAGE = "raypipe:latest"


def _kfp() -> Any:
    try:
        import kfp
        from kfp import compiler, dsl  # noqa: F401
    except ImportError:
        raise ExportError(["the Kubeflow Pipelines export needs the kfp SDK: pip install 'raypipe[kfp]'"]) from None
    return kfp


def export_kfp(spec_path: str | Path, output: str | Path | None = None, *, image: str = DEFAULT_IMAGE, mode: str = "container",
               spec_in_image: str | None = None, namespace: str = "") -> dict[str, Any]:
    """Compile the pipeline at ``spec_path`` into a KFP v2 pipeline YAML at ``output``.

    Args:
        spec_path: the spec on this machine (validated in full, and hashed).
        output: the pipeline YAML to write (default: ``<name>-kfp.yaml`` here); never the spec itself.
        image: the image every task runs in (and, in ``rayjob`` mode, the Ray cluster's pods).
        mode: ``container`` (one task per stage running it) or ``rayjob`` (one KubeRay RayJob per stage).
        spec_in_image: the spec's path inside the image (default: ``spec_path`` as given, so a
            relative path resolves from the image's working directory).
        namespace: ``rayjob`` mode: where the RayJobs are created (default: the task pod's namespace).

    Returns:
        A summary: output path, pipeline name, mode, image and the stages in order.

    Raises:
        SpecError: the spec is invalid. ExportError: unknown mode, or kfp is not installed.
    """
    from raypipe.runner import STAGE_NAMES
    from raypipe.spec import load_spec

    if mode not in MODES:
        raise ExportError([f"--mode must be one of {', '.join(MODES)} (got {mode!r})"])
    spec = load_spec(spec_path)  # the whole spec is checked before anything is written
    _kfp()
    from kfp import compiler, dsl

    output = Path(output or f"{spec.name}-kfp.yaml")
    if output.resolve() == Path(spec_path).resolve():
        raise ExportError([f"-o {output} is the spec itself: write the pipeline to another file"])
    inside = str(spec_in_image or spec_path)
    digest = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    name = k8s_name(spec.name)
    stages = list(STAGE_NAMES)
    description = f"raypipe pipeline {spec.name!r}: {' -> '.join(stages)} ({mode} mode, image {image})"

    if mode == "container":
        component = dsl.component(raypipe_stage, base_image=image)

        @dsl.pipeline(name=name, description=description)
        def pipeline(spec: str = inside, address: str = "", spec_sha256: str = digest) -> None:
            previous = None
            for stage in stages:
                task = component(spec=spec, stage=stage, address=address, spec_sha256=spec_sha256)
                task.set_display_name(stage).set_caching_options(enable_caching=False)
                if previous is not None:
                    task.after(previous)
                previous = task
    else:
        component = dsl.component(raypipe_rayjob, base_image=image)
        manifests = {s: json.dumps(rayjob_manifest(inside, s, image=image, pipeline=spec.name)) for s in stages}

        @dsl.pipeline(name=name, description=description)
        def pipeline(namespace: str = namespace, poll_s: float = 10.0, timeout_s: float = 3600.0) -> None:
            previous = None
            for stage in stages:
                task = component(manifest=manifests[stage], namespace=namespace, poll_s=poll_s, timeout_s=timeout_s)
                task.set_display_name(stage).set_caching_options(enable_caching=False)
                if previous is not None:
                    task.after(previous)
                previous = task

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(output))
    return {"path": str(output), "pipeline": name, "mode": mode, "image": image, "spec": inside,
            "spec_sha256": digest, "stages": stages}
