"""Training behind one public API: :func:`fit` for the train stage, and the same training under
Tune's control for its trials (:func:`torch_trainer`, :func:`torch_fitted`, :func:`fit_estimator`,
:func:`validation_scores`). ``dims``: ``input_dim``, ``n_outputs``, ``class_weights``, ``layout``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fitted:
    """A trained model: its metadata (``model.json``), its weights (torch state dict) or skops bytes, a report."""

    meta: dict[str, Any]
    model: Any
    report: dict[str, Any] = field(default_factory=dict)


def fit(spec: Any, ctx: Any, splits: dict[str, Any], dims: dict[str, Any]) -> Fitted:
    """Train ``spec``'s model on the transformed ``splits`` (``{"x", "y"}`` Ray Datasets)."""
    if spec.model.is_torch:
        from raypipe.train.local import SINGLE, train_single
        from raypipe.train.torch_trainer import train_torch

        datasets = {s: splits[s] for s in ("train", "validation") if s in splits}
        path, why = dims["path"]
        if path == SINGLE:
            return Fitted(*train_single(spec, ctx, datasets, dims, why))
        meta, weights, report = train_torch(spec, ctx, datasets, dims)
        return Fitted(meta, weights, {**report, "path": path, "path_reason": why})
    from raypipe.train.sklearn_trainer import train_sklearn

    return Fitted(*train_sklearn(spec, splits.get("train"), dims))


def torch_trainer(spec: Any, dims: dict[str, Any], datasets: dict[str, Any], run_config: Any,
                  gate: Any = None) -> Any:
    """The ``TorchTrainer`` of one configuration; ``gate`` (a Ray queue) makes rank 0 wait for Tune after each epoch."""
    from raypipe.train.torch_trainer import loop_config, make_trainer

    config = {**loop_config(spec, dims, "validation" in datasets), **({"tune_gate": gate} if gate is not None else {})}
    return make_trainer(spec, config, datasets, run_config)


def torch_fitted(spec: Any, dims: dict[str, Any], checkpoint: Any, ddp: Any, where: str) -> Fitted:
    """The model of a finished torch run from its newest complete checkpoint."""
    from raypipe.train.torch_trainer import model_from_checkpoint

    return Fitted(*model_from_checkpoint(spec, checkpoint, dims, ddp, where))


def fit_estimator(spec: Any, train_refs: list[Any], dims: dict[str, Any]) -> Fitted:
    """Fit ``spec``'s scikit-learn estimator in this process on a split's ``to_numpy_refs()`` blocks."""
    from raypipe.train.sklearn_trainer import fit_arrays, read_arrays

    blob = fit_arrays(spec.model.kind, spec.model.params, *read_arrays(train_refs), dims["class_weights"],
                      spec.train.seed, spec.data.task)
    return Fitted(fit_meta(spec, dims), blob)


def fit_meta(spec: Any, dims: dict[str, Any]) -> dict[str, Any]:
    """``model.json`` of ``spec``'s scikit-learn model."""
    from raypipe.model.formats import model_meta

    return model_meta(spec.model.kind, spec.data.task, dims["n_outputs"], params=spec.model.params)


def validation_scores(spec: Any, fitted: Fitted, val_refs: list[Any], dims: dict[str, Any]) -> dict[str, float]:
    """The validation metrics a torch run reports per epoch (``val_f1``, ``val_rmse``, ...), for an estimator."""
    from raypipe.model.formats import SklearnModel, load_skops
    from raypipe.train.metrics import validation_metrics
    from raypipe.train.sklearn_trainer import read_arrays

    model = SklearnModel({"task": spec.data.task, "n_outputs": dims["n_outputs"]}, load_skops(fitted.model))
    x, y = read_arrays(val_refs)
    return validation_metrics(spec.data.task, y, model.predict_scores(x), dims["n_outputs"])
