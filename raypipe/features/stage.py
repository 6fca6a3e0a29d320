"""The features stage: fit the feature pipeline on the training split (Ray Data).

One pass over the split gathers every operator's statistics; a second pass runs only
when ``features.pca`` is set (PCA works on the fitted operators' output).
"""
from __future__ import annotations

from typing import Any

from raypipe.datasets import read_parquet
from raypipe.features.pipeline import FeaturePipeline
from raypipe.features.balance import class_counts


def build(spec: Any, schema: dict[str, Any]) -> FeaturePipeline:
    """The unfitted pipeline for ``spec.features`` on the validated data's schema."""
    return FeaturePipeline.from_spec(spec.features, schema)


def class_weights(counts: dict[str, int], classes: list[str]) -> list[float]:
    """Balanced weights n / (k * n_c), as scikit-learn's ``class_weight="balanced"``."""
    n, k = sum(counts.values()), len(classes)
    return [n / (k * counts[c]) if counts.get(c) else 0.0 for c in classes]


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.ray()
    val = inputs["validate"]
    schema = val.store.read_json(val.outputs["schema"])
    pipeline = build(ctx.spec, schema).fit(read_parquet(val.store, val.outputs["splits"]["train"]))
    ctx.artifact.write_json("features.json", pipeline.to_dict())
    out: dict[str, Any] = {"features": "features.json", "n_features": pipeline.n_features, "class_weights": None}
    target = schema.get("target")
    if target and target.get("classes") and ctx.spec.features.balance == "class_weight":
        counts = class_counts(read_parquet(val.store, val.outputs["splits"]["train"]), target["name"])
        out["class_weights"] = class_weights(counts, target["classes"])
    ctx.log(_summary(pipeline))
    return out


def _summary(pipeline: FeaturePipeline) -> str:
    groups = {"numeric": pipeline.numeric, "categorical": pipeline.categorical,
              "text": pipeline.text, "image": pipeline.image}
    parts = " + ".join(f"{len(cols)} {kind}" for kind, cols in groups.items() if cols) or "no"
    pca = f", PCA to {pipeline.pca_components} components" if pipeline.pca is not None else ""
    return f"{pipeline.n_features} features from {parts} columns{pca}"
