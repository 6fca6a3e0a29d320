"""The trained model as ONNX (skl2onnx for scikit-learn, ``torch.onnx`` for the torch zoo), and
the decision raypipe takes on its scores (threshold, argmax, anomaly flag) as ONNX nodes."""
from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.tasks import TASKS
from raypipe.errors import ExportError
from raypipe.export.graph import Graph
from raypipe.model.formats import SklearnModel, TorchModel

OPSET = 18  # the default domain's opset for scikit-learn models (torch.onnx picks its own)
ML_OPSET = 3


def model_proto(model: Any, n_features: int) -> tuple[Any, dict[str, Any]]:
    """(ONNX model with the input ``features`` float32 [N, n_features], its raw outputs by role).

    Roles: ``scores`` (class probabilities [N, K] in raypipe's class order, or anomaly
    decision values), ``value`` (regression), ``label`` (cluster ids).
    """
    if isinstance(model, TorchModel):
        return _torch(model, n_features)
    if isinstance(model, SklearnModel):
        return _sklearn(model, n_features)
    raise ExportError([f"model type {type(model).__name__} has no ONNX export"])


def _sklearn(model: SklearnModel, n_features: int) -> tuple[Any, dict[str, Any]]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est = model.estimator
    scores = TASKS[model.task].scores
    options = {id(est): {"zipmap": False}} if scores == "probabilities" else None
    try:
        proto = convert_sklearn(est, initial_types=[("features", FloatTensorType([None, n_features]))],
                                options=options, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except Exception as exc:  # skl2onnx raises many types; all mean "this estimator has no converter"
        raise ExportError([f"model.kind {model.meta['kind']!r}: skl2onnx cannot convert "
                           f"{type(est).__name__} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"]) from exc
    names = [o.name for o in proto.graph.output]
    roles = {"probabilities": {"scores": names[-1]}, "cluster": {"label": names[0]},
             "anomaly_score": {"scores": names[-1]}}.get(scores, {"value": names[0]})
    if scores == "probabilities" and len(est.classes_) != model.meta["n_outputs"]:
        roles["scatter"] = _class_scatter(est.classes_, model.meta["n_outputs"])
    return proto, roles


def _class_scatter(seen: Any, n_classes: int) -> np.ndarray:
    """0/1 matrix taking the estimator's probabilities to raypipe's K classes (unseen ones stay 0)."""
    m = np.zeros((len(seen), n_classes), dtype=np.float32)
    m[np.arange(len(seen)), np.asarray(seen).astype(int)] = 1.0
    return m


def _torch(model: TorchModel, n_features: int) -> tuple[Any, dict[str, Any]]:
    import torch

    class Scores(torch.nn.Module):
        """The network plus the softmax raypipe applies (TorchModel.predict_scores)."""

        def __init__(self, net: torch.nn.Module, classify: bool) -> None:
            super().__init__()
            self.net, self.classify = net, classify

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x).float()
            return torch.softmax(out, dim=1) if self.classify else out[:, :1]

    head = Scores(model.net, TASKS[model.task].has_classes).eval()
    sample = torch.zeros(2, n_features, dtype=torch.float32)
    try:
        program = torch.onnx.export(head, (sample,), dynamo=True, input_names=["features"], output_names=["scores"],
                                    dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False, verbose=False)
    except Exception as exc:
        raise ExportError([f"model.kind {model.meta['kind']!r}: torch.onnx.export failed "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"]) from exc
    return program.model_proto, {"scores" if TASKS[model.task].has_classes else "value": "scores"}


def add_decision(g: Graph, outputs: dict[str, Any], task: str, *, threshold: float, n_classes: int | None,
                 classes: list[str] | None, offset: float | None) -> None:
    """Append the nodes (and graph outputs) that turn raw model outputs into raypipe's answer.

    classification: ``scores`` [N, K], ``class_index`` (binary: positive score >= threshold,
    else argmax) and ``label`` (the class name); regression: ``prediction``; clustering:
    ``cluster``; anomaly: ``anomaly_score`` (higher = more anomalous) and ``is_anomaly``.
    """
    from onnx import TensorProto

    def flat() -> str:
        return g.const(np.array([-1], dtype=np.int64), "flat")

    kind = TASKS[task].scores
    if kind == "probabilities":
        scores = outputs["scores"]
        if "scatter" in outputs:  # classes absent from training (SklearnModel.predict_scores)
            scores = g.op("MatMul", scores, g.const(outputs["scatter"], "scatter"))
        if n_classes == 2:
            positive = g.op("Gather", scores, g.const(np.array(1, dtype=np.int64), "positive"), axis=1)
            decided = g.op("Cast", g.op("GreaterOrEqual", positive, g.const(np.float32(threshold), "threshold")),
                           to=TensorProto.INT64)
        else:
            decided = g.op("ArgMax", scores, axis=1, keepdims=0)
        g.output(scores, "scores", TensorProto.FLOAT, ["N", n_classes])
        g.output(decided, "class_index", TensorProto.INT64, ["N"])
        g.output(g.op("Gather", g.const(np.array(classes, dtype=object), "classes"), decided, axis=0), "label",
                 TensorProto.STRING, ["N"])
        return
    if kind == "value":
        g.output(g.op("Reshape", outputs["value"], flat()), "prediction", TensorProto.FLOAT, ["N"])
        return
    if kind == "cluster":
        g.output(g.op("Reshape", outputs["label"], flat()), "cluster", TensorProto.INT64, ["N"])
        return
    # anomaly: skl2onnx gives decision_function = score_samples - offset_; raypipe's score is -score_samples
    decision = g.op("Reshape", outputs["scores"], flat())
    score = g.op("Neg", g.op("Add", decision, g.const(np.float32(offset or 0.0), "offset")))
    g.output(score, "anomaly_score", TensorProto.FLOAT, ["N"])
    g.output(g.op("GreaterOrEqual", score, g.const(np.float32(threshold), "threshold")), "is_anomaly",
             TensorProto.BOOL, ["N"])
