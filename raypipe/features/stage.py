"""The features stage: fit the feature pipeline on the training split (Ray Data).

One pass over the split gathers every operator's statistics; a second pass runs only
when ``features.pca`` is set (PCA works on the fitted operators' output).
"""
from __future__ import annotations

from typing import Any

from raypipe.datasets import read_parquet
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.stage import FeaturesOutput, StageContext, StageOutput


def build(spec: Any, schema: dict[str, Any]) -> FeaturePipeline:
    """The unfitted pipeline for ``spec.features`` on the validated data's schema."""
    return FeaturePipeline.from_spec(spec.features, schema)


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> FeaturesOutput:
    ctx.ray()
    val = inputs["validate"]
    schema = val.read_json(val.outputs.schema)
    pipeline = build(ctx.spec, schema).fit(read_parquet(val.store, val.outputs.splits["train"]))
    ctx.artifact.write_json("features.json", pipeline.to_dict())
    ctx.log(_summary(pipeline))
    return FeaturesOutput(features="features.json", n_features=pipeline.n_features)


def _summary(pipeline: FeaturePipeline) -> str:
    groups = {"numeric": pipeline.numeric, "categorical": pipeline.categorical, "datetime": pipeline.datetime,
              "text": pipeline.text, "image": pipeline.image}
    parts = " + ".join(f"{len(cols)} {kind}" for kind, cols in groups.items() if cols) or "no"
    pca = f", PCA to {pipeline.pca_components} components" if pipeline.pca is not None else ""
    return f"{pipeline.n_features} features from {parts} columns{pca}"
