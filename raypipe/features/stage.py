"""The features stage: fit the feature pipeline on the training split.

One pass over the split gathers every operator's statistics, a plain Ray task per parquet file
(the block a Ray Data read would make of it; ``datasets.run_tasks``); a second pass, a Ray Data
execution that merges the blocks' statistics as they come, runs only when ``features.pca`` is set
(PCA works on the fitted operators' output). Below :data:`raypipe.datasets.SMALL_DATA_BYTES` one
Ray task (or the driver) reads the split and fits on the same blocks.
"""
from __future__ import annotations

from typing import Any

from raypipe.datasets import as_batch, is_small, parquet_files, read_blocks, read_file, read_parquet, run_small, run_tasks
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.tasks import TASKS
from raypipe.stage import FeaturesOutput, StageContext, StageOutput


def build(spec: Any, schema: dict[str, Any]) -> FeaturePipeline:
    """The unfitted pipeline for ``spec.features`` on the validated data's schema."""
    return FeaturePipeline.from_spec(spec.features, schema)


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> FeaturesOutput:
    if TASKS[ctx.spec.data.task].policy:  # a policy acts on the environment's raw observations
        ctx.log("no features: the policy acts on the environment's observations as they are")
        return FeaturesOutput(features="", n_features=0)
    val = inputs["validate"]
    schema = val.read_json(val.outputs.schema)
    rel = val.outputs.splits["train"]
    small = is_small(val.store, [rel])
    ctx.ray(small=small)
    if small:
        pipeline = FeaturePipeline.from_dict(run_small(_fit_table, build(ctx.spec, schema), val.store, rel))
    else:
        pipeline = _fit_per_file(build(ctx.spec, schema), val.store, rel)
    ctx.artifact.write_json("features.json", pipeline.to_dict())
    ctx.log(_summary(pipeline))
    return FeaturesOutput(features="features.json", n_features=pipeline.n_features)


def _fit_table(pipeline: FeaturePipeline, store: Any, rel: str) -> dict[str, Any]:
    """The small-data path, inside one Ray task: the per-block statistics of each block (file) of the split,
    merged as ``FeaturePipeline.fit`` merges a dataset's; the fitted pipeline as a dict."""
    batches = [as_batch(t, "pandas") for t in read_blocks(store, rel, columns=pipeline.input_columns or None)]
    pipeline.fit_from_stats([pipeline.partial_stats(b) for b in batches])
    if pipeline.pca is not None:
        pipeline.fit_pca_from_stats([pipeline.pca_partial_stats(b) for b in batches])
    return pipeline.to_dict()


def _fit_per_file(pipeline: FeaturePipeline, store: Any, rel: str) -> FeaturePipeline:
    """The distributed path: each file's statistics in a task of its own (``PerFile(_file_stats)``), merged as
    ``FeaturePipeline.fit`` merges a dataset's blocks'; PCA's pass over the dataset."""
    calls = [(pipeline, store, path) for path in parquet_files(store, rel)]
    pipeline.fit_from_stats(run_tasks("PerFile", _file_stats, calls))
    if pipeline.pca is None:
        return pipeline
    ds = read_parquet(store, rel, one_block_per_file=True)
    return pipeline.fit_pca(ds.select_columns(pipeline.input_columns) if pipeline.input_columns else ds)


def _file_stats(pipeline: FeaturePipeline, store: Any, path: str) -> dict[str, Any]:
    return pipeline.partial_stats(as_batch(read_file(store, path, columns=pipeline.input_columns or None), "pandas"))


def _summary(pipeline: FeaturePipeline) -> str:
    groups = {"numeric": pipeline.numeric, "categorical": pipeline.categorical, "datetime": pipeline.datetime,
              "text": pipeline.text, "image": pipeline.image, "audio": pipeline.audio}
    parts = " + ".join(f"{len(cols)} {kind}" for kind, cols in groups.items() if cols) or "no"
    pca = f", PCA to {pipeline.pca_components} components" if pipeline.pca is not None else ""
    return f"{pipeline.n_features} features from {parts} columns{pca}"
