"""The fitted feature pipeline as ONNX nodes: raw columns in, the float32 feature matrix out.

Each operator is rebuilt from its fitted JSON state with standard ONNX operators (and
``ai.onnx.ml`` LabelEncoder), computing in float64 like the numpy code and casting to
float32 at the end, so onnxruntime gives the same features as
:meth:`raypipe.model.features.pipeline.FeaturePipeline.transform`.

Inputs, one per raw column (batch dimension ``N``):

- numeric: ``float64 [N, 1]``; NaN or ±inf is a missing value (imputed), booleans 0/1;
- categorical (one-hot, ordinal): ``string [N, 1]``; the empty string is a missing value
  (unless it was a training category: ONNX strings have no null);
- image: ``float64 [N, h, w]`` or ``[N, h, w, c]``, pixels 0-255, every image present.

Not exportable (an :class:`~raypipe.errors.ExportError` says so and what to use):
categorical ``hashing`` (pandas' SipHash has no ONNX operator), text columns
(the tokeniser and vocabulary lookup have no standard ONNX form) and datetime columns
(date parsing and calendar parts are not built as ONNX nodes yet).
:func:`onnx_feed` turns raw records into these inputs with raypipe's own coercions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.errors import ExportError
from raypipe.export.graph import ML, Graph
from raypipe.columns import as_float, as_str
from raypipe.model.features.pipeline import FeaturePipeline

FEATURES = "features"


def input_specs(pipeline: FeaturePipeline) -> list[dict[str, Any]]:
    """``[{name, kind, dtype, shape}]``: the exported model's inputs, in order."""
    specs = []
    for op in pipeline.operators:
        for c in op.columns:
            if op.kind == "numeric":
                specs.append({"name": c, "kind": "numeric", "dtype": "float64", "shape": ["N", 1]})
            elif op.kind == "categorical":
                specs.append({"name": c, "kind": "categorical", "dtype": "string", "shape": ["N", 1]})
            elif op.kind == "image":
                specs.append({"name": c, "kind": "image", "dtype": "float64", "shape": ["N", *op.shapes[c]]})
    return specs


def check_exportable(pipeline: FeaturePipeline) -> None:
    """Raise :class:`ExportError` naming every setting that has no ONNX form."""
    problems = []
    for op in pipeline.operators:
        if op.kind == "categorical" and op.encode == "hashing":
            problems.append(f"features.categorical.encode: 'hashing' (columns {op.columns}) has no ONNX form "
                            "(pandas' SipHash is no ONNX operator); use 'onehot' or 'ordinal'")
        if op.kind == "text":
            problems.append(f"text columns {op.columns} have no ONNX form (tokenising and the vocabulary lookup); "
                            "serve this pipeline with raypipe serve, or drop the text features to export")
        if op.kind == "datetime":
            problems.append(f"datetime features are not supported by ONNX export yet (columns {op.columns}); serve "
                            "this pipeline with raypipe serve, or list them in data.id_columns to export without them")
        if op.kind == "audio":
            problems.append(f"audio columns {op.columns} have no ONNX form (decoding and the mel spectrogram); "
                            "serve this pipeline with raypipe serve")
    if problems:
        raise ExportError(problems)


def build_features(g: Graph, pipeline: FeaturePipeline) -> str:
    """Add the inputs and nodes of ``pipeline`` to ``g``; returns the name of the float32 features."""
    from onnx import TensorProto

    check_exportable(pipeline)
    blocks = []
    for op in pipeline.operators:
        if op.kind == "numeric":
            blocks.append(_numeric(g, op))
        elif op.kind == "categorical":
            blocks += [_categorical(g, op, c) for c in op.columns]
        elif op.kind == "image":
            blocks += [_image(g, op, c) for c in op.columns]
    x = blocks[0] if len(blocks) == 1 else g.op("Concat", *blocks, axis=1)
    if pipeline.pca is not None:
        x = _pca(g, pipeline.pca, x)
    g.output(x, FEATURES, TensorProto.FLOAT, ["N", pipeline.n_features])
    return FEATURES


def _numeric(g: Graph, op: Any) -> str:
    """Impute → clip → signed log1p → scale, on the columns side by side."""
    from onnx import TensorProto

    cols = [g.input(c, TensorProto.DOUBLE, ["N", 1]) for c in op.columns]
    x = cols[0] if len(cols) == 1 else g.op("Concat", *cols, axis=1)

    def vec(values: list[float], hint: str) -> str:
        return g.const(np.asarray(values, dtype=np.float64)[None, :], hint)

    missing = g.op("Or", g.op("IsNaN", x), g.op("IsInf", x))
    x = g.op("Where", missing, vec([op.impute_values_[c] for c in op.columns], "impute"), x)
    if op.clip_:
        x = g.op("Max", x, vec([op.clip_[c][0] for c in op.columns], "clip_lo"))
        x = g.op("Min", x, vec([op.clip_[c][1] for c in op.columns], "clip_hi"))
    if op.log:
        logged = g.op("Mul", g.op("Sign", x), g.op("Log", g.op("Add", g.op("Abs", x), g.const(1.0, "one", np.float64))))
        mask = g.const(np.array([[c in op.log for c in op.columns]]), "log_mask")
        x = g.op("Where", mask, logged, x)
    x = g.op("Div", g.op("Sub", x, vec([op.centers_[c] for c in op.columns], "center")),
             vec([op.scales_[c] for c in op.columns], "scale"))
    return g.op("Cast", x, to=TensorProto.FLOAT)


def _categorical(g: Graph, op: Any, c: str) -> str:
    """Category index by LabelEncoder (rare/unseen → the last), then one-hot or the index itself."""
    from onnx import TensorProto

    s = g.input(c, TensorProto.STRING, ["N", 1])
    cats = op.categories_[c]
    keys, values = list(cats), list(range(len(cats)))
    if "" not in cats:  # the empty string stands for a missing value: -1, no column set
        keys, values = [*keys, ""], [*values, -1]
    codes = g.op("LabelEncoder", s, domain=ML, keys_strings=keys, values_int64s=values, default_int64=len(cats))
    if op.encode == "ordinal":
        return g.op("Cast", codes, to=TensorProto.FLOAT)
    hot = g.op("Equal", codes, g.const(np.arange(len(cats) + 1, dtype=np.int64)[None, :], "categories"))
    return g.op("Cast", hot, to=TensorProto.FLOAT)


def _image(g: Graph, op: Any, c: str) -> str:
    """pixels / 255 (minus the channel mean, over its std), flattened in C order."""
    from onnx import TensorProto

    shape = op.shapes[c]
    x = g.op("Div", g.input(c, TensorProto.DOUBLE, ["N", *shape]), g.const(255.0, "max_pixel", np.float64))
    if op.normalize == "standard":
        mean, std = np.asarray(op.mean_[c], np.float64), np.asarray(op.std_[c], np.float64)
        if len(shape) == 2:
            mean, std = mean[0], std[0]
        x = g.op("Div", g.op("Sub", x, g.const(mean, "pixel_mean")), g.const(std, "pixel_std"))
    flat = g.op("Reshape", x, g.const(np.array([0, -1], dtype=np.int64), "flat"))
    return g.op("Cast", flat, to=TensorProto.FLOAT)


def _pca(g: Graph, pca: Any, x: str) -> str:
    from onnx import TensorProto

    centred = g.op("Sub", g.op("Cast", x, to=TensorProto.DOUBLE), g.const(np.asarray(pca._mean), "pca_mean"))
    return g.op("Cast", g.op("MatMul", centred, g.const(np.asarray(pca._weights), "pca_weights")), to=TensorProto.FLOAT)


def onnx_feed(pipeline: FeaturePipeline, records: Any) -> dict[str, np.ndarray]:
    """The exported model's inputs for raw rows (a DataFrame or a list of dicts), coerced as raypipe does.

    Numeric values go through :func:`raypipe.model.features.base.as_float` (None, junk → NaN),
    categorical ones through :func:`~raypipe.model.features.base.as_str` (None → ``""``).
    """
    import pandas as pd

    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame.from_records(records)
    feed: dict[str, np.ndarray] = {}
    for spec in input_specs(pipeline):
        col = frame[spec["name"]]
        if spec["kind"] == "numeric":
            feed[spec["name"]] = as_float(col)[:, None]
        elif spec["kind"] == "categorical":
            feed[spec["name"]] = as_str(col).fillna("").to_numpy(dtype=object)[:, None]
        else:
            feed[spec["name"]] = np.stack([np.asarray(v, dtype=np.float64).reshape(spec["shape"][1:]) for v in col])
    return feed
