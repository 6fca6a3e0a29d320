"""Export a registered version for the edge: features + model + decision as one ONNX file.

``raypipe export onnx SPEC`` (or :func:`export_onnx`) writes a model that takes
the raw columns (see :mod:`raypipe.export.onnx_features` for the inputs) and answers
what the Serve endpoint answers: class scores, index and label (with the version's
threshold), a regression value, a cluster id, or an anomaly score and flag. The
fitted features are rebuilt as ONNX nodes from their JSON state; the model comes from
skl2onnx (scikit-learn) or ``torch.onnx`` (the torch zoo). A reinforcement-learning
version exports its policy instead: observations in, the deterministic action out
(:mod:`raypipe.export.onnx_policy`). Needs ``pip install 'raypipe[onnx]'``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raypipe.errors import ExportError
from raypipe.export.onnx_features import build_features, input_specs, onnx_feed

__all__ = ["ExportResult", "export_onnx", "onnx_feed", "input_specs"]


@dataclass
class ExportResult:
    path: str
    version: int
    inputs: list[dict[str, Any]]
    outputs: list[str]
    bytes: int


def export_onnx(predictor: Any, path: str, *, pipeline: str = "") -> ExportResult:
    """Write ``predictor`` (a :class:`raypipe.model.predictor.Predictor`, or the
    :class:`raypipe.model.policy.Policy` a reinforcement-learning version loads as) as one ONNX model at ``path``."""
    try:
        import onnx
    except ImportError:
        raise ExportError(["ONNX export needs the onnx extra: pip install 'raypipe[onnx]'"]) from None
    if getattr(predictor, "task", None) == "reinforcement":
        return _export_policy(predictor, path, pipeline=pipeline)
    from onnx import compose

    from raypipe.export.graph import Graph
    from raypipe.export.onnx_model import ML_OPSET, add_decision, model_proto

    features, model = predictor.features, predictor.model
    g = Graph("raypipe")
    x = build_features(g, features)  # first: it refuses what has no ONNX form before the slow model conversion
    proto, roles = model_proto(model, features.n_features)
    proto = compose.add_prefix(proto, "model/")
    g.alias(x, "model/features")  # the features feed the model
    g.nodes.extend(proto.graph.node)
    g.initializers.extend(proto.graph.initializer)
    roles = {k: (f"model/{v}" if isinstance(v, str) else v) for k, v in roles.items()}
    offset = getattr(getattr(model, "estimator", None), "offset_", None)
    add_decision(g, roles, predictor.task, threshold=float(predictor.threshold),
                 n_classes=len(predictor.classes) if predictor.classes else None, classes=predictor.classes,
                 offset=float(offset) if offset is not None else None)

    opsets = {"ai.onnx.ml": ML_OPSET}
    for o in proto.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    out = g.model(opsets, ir_version=proto.ir_version, doc=f"raypipe {pipeline} version {predictor.version}")
    out.functions.extend(proto.functions)
    meta = {"raypipe.pipeline": pipeline, "raypipe.version": str(predictor.version), "raypipe.task": predictor.task,
            "raypipe.threshold": str(predictor.threshold), "raypipe.inputs": json.dumps(input_specs(features)),
            "raypipe.classes": json.dumps(predictor.classes)}
    onnx.helper.set_model_props(out, meta)
    onnx.checker.check_model(out, full_check=True)
    data = out.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return ExportResult(path, int(predictor.version or 0), input_specs(features), [o.name for o in out.graph.output],
                        len(data))


def _export_policy(policy: Any, path: str, *, pipeline: str) -> ExportResult:
    """A policy: observations in, the deterministic action out (:mod:`raypipe.export.onnx_policy`)."""
    from raypipe.export.onnx_policy import policy_input, policy_proto

    proto = policy_proto(policy, pipeline=pipeline)
    data = proto.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return ExportResult(path, int(getattr(policy, "version", None) or 0), [policy_input(policy)],
                        [o.name for o in proto.graph.output], len(data))
