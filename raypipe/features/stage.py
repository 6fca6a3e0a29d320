"""The features stage: fit the feature pipeline on the training split (Ray Data).

One pass over the split gathers every operator's statistics; a second pass runs only
when ``features.pca`` is set (PCA works on the fitted operators' output). Below
:data:`raypipe.datasets.SMALL_DATA_BYTES` one Ray task reads the split and fits on the whole
blocks (the same per-block statistics of the same blocks) instead of a Ray Data execution.
"""
from __future__ import annotations

from typing import Any

from raypipe.datasets import as_batch, is_small, read_blocks, read_parquet, run_small
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
        pipeline = build(ctx.spec, schema).fit(read_parquet(val.store, rel, one_block_per_file=True))
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


def _summary(pipeline: FeaturePipeline) -> str:
    groups = {"numeric": pipeline.numeric, "categorical": pipeline.categorical, "datetime": pipeline.datetime,
              "text": pipeline.text, "image": pipeline.image, "audio": pipeline.audio}
    parts = " + ".join(f"{len(cols)} {kind}" for kind, cols in groups.items() if cols) or "no"
    pca = f", PCA to {pipeline.pca_components} components" if pipeline.pca is not None else ""
    return f"{pipeline.n_features} features from {parts} columns{pca}"
