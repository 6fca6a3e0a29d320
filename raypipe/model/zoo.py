"""The torch model zoo: ``model.kind`` → an ``nn.Module`` over the feature matrix.

Every model takes the float32 feature matrix the fitted :class:`FeaturePipeline`
produces and returns ``(n, n_outputs)`` logits (classification) or ``(n, 1)`` values
(regression). Models that need structure find it in the pipeline's *layout*, the
column ranges of each operator's block (:meth:`FeaturePipeline.layout`):

- ``torch.mlp``: an MLP over all features. Params: ``hidden`` ([128, 64]), ``dropout``.
- ``torch.cnn``: a small CNN over the one image column (the block reshaped to
  ``(c, h, w)``), pooled, joined with the other features, then an MLP head.
  Params: ``channels`` ([16, 32]), ``kernel_size`` (3), ``hidden`` ([64]), ``dropout``,
  ``pool`` (the pooled grid: 4 for a newly trained model, 1 = global for one saved without it).
- ``torch.audio``: a CNN over the one audio column's log-mel spectrogram (the block
  reshaped to ``(1, n_mels, frames)``), max-pooled over time so a word is found wherever
  it starts in the clip, joined with the other features, then an MLP head. Params:
  ``channels`` ([16, 32, 64]), ``kernel_size`` (3), ``hidden`` ([64]), ``dropout``, ``bands``
  (the frequency rows kept after pooling: 4).
- ``torch.text``: an ``EmbeddingBag`` (sum of embeddings weighted by the text block's
  TF-IDF/hashing values, i.e. a bag of words), joined with the other features, then
  an MLP head. Params: ``embed_dim`` (64), ``hidden`` ([64]), ``dropout``.
- ``torch:<module>:<factory>``: the user's factory, called as
  ``factory(input_dim=..., n_outputs=..., layout=..., **params)``; it returns the module.

A regression model trained on the standardised target (``train.scale_target``) is
wrapped in :class:`TargetScale`, which un-scales its output (``out * std + mean``, the
train split's statistics stored in ``model.json`` as ``target_scale``): the module's
output is in the target's units wherever it runs (training, serving, ONNX export), and
the training loss divides the squared error by the variance, which is exactly the MSE
of the standardised target.

The same function builds the model in each Ray Train worker and in the serving
replica, from the JSON in the model's metadata; the weights travel as safetensors.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn

from raypipe.errors import SpecError

BUILTIN = ("torch.mlp", "torch.cnn", "torch.text", "torch.audio")
CNN_POOL = 4  # torch.cnn's pooled grid for newly trained models (see ImageCNN)
TRAIN_PARAMS = {"torch.cnn": {"pool": CNN_POOL}}
"""Params a newly trained zoo model gets unless ``model.params`` sets them; they are stored in
``model.json``, so a model saved before a default changed loads with the architecture it was trained with."""


def build_model(kind: str, *, input_dim: int, n_outputs: int, layout: list[dict[str, Any]] | None = None,
                params: dict[str, Any] | None = None, target_scale: dict[str, float] | None = None) -> Any:
    """The untrained module for ``kind`` (see the module docstring); wrapped in :class:`TargetScale`
    when ``target_scale`` (``{"mean", "std"}``) is given."""
    net = _build(kind, input_dim=input_dim, n_outputs=n_outputs, layout=layout, params=params)
    return TargetScale(net, **target_scale) if target_scale else net


class TargetScale(nn.Module):
    """A regression network whose raw output is the standardised target: returns ``raw * std + mean``.

    ``mean`` and ``std`` are non-persistent buffers (they live in ``model.json``, not in the
    weights); the addition runs in float32 even under autocast.
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"target_scale: std must be > 0, not {std!r}")
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float() * self.std + self.mean


def _build(kind: str, *, input_dim: int, n_outputs: int, layout: list[dict[str, Any]] | None,
           params: dict[str, Any] | None) -> Any:
    params = dict(params or {})
    layout = layout or [{"kind": "dense", "start": 0, "stop": input_dim}]
    if kind == "torch.mlp":
        return mlp(input_dim, _ints(params.get("hidden", [128, 64])), n_outputs, float(params.get("dropout", 0.0)))
    if kind == "torch.cnn":
        return ImageCNN(layout, input_dim, n_outputs, channels=_ints(params.get("channels", [16, 32])),
                        kernel_size=int(params.get("kernel_size", 3)), hidden=_ints(params.get("hidden", [64])),
                        dropout=float(params.get("dropout", 0.0)), pool=int(params.get("pool", 1)))
    if kind == "torch.audio":
        return AudioCNN(layout, input_dim, n_outputs, channels=_ints(params.get("channels", [16, 32, 64])),
                        kernel_size=int(params.get("kernel_size", 3)), hidden=_ints(params.get("hidden", [64])),
                        dropout=float(params.get("dropout", 0.0)), bands=int(params.get("bands", 4)))
    if kind == "torch.text":
        return TextBag(layout, input_dim, n_outputs, embed_dim=int(params.get("embed_dim", 64)),
                       hidden=_ints(params.get("hidden", [64])), dropout=float(params.get("dropout", 0.0)))
    if kind.startswith("torch:"):
        factory = import_factory(kind)
        module = factory(input_dim=input_dim, n_outputs=n_outputs, layout=layout, **params)
        if not isinstance(module, nn.Module):
            raise SpecError(f"model.kind: {kind!r} returned {type(module).__name__}, not a torch.nn.Module")
        return module
    raise SpecError(f"model.kind: unknown torch model {kind!r}; use one of {list(BUILTIN)} or 'torch:<module>:<factory>'")


def import_factory(kind: str) -> Any:
    path = kind.removeprefix("torch:")
    module, _, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"model.kind: cannot import {path!r} ({exc}); the module must be importable on every "
                        "Ray worker (installed, or shipped with the job's working_dir)") from None
    if not callable(factory):
        raise SpecError(f"model.kind: {path!r} is not callable; point it at a function or nn.Module class")
    return factory


def check_layout(kind: str, layout: list[dict[str, Any]]) -> None:
    """Fail on the driver, before Ray Train starts, when the features do not fit the model."""
    kinds = [b["kind"] for b in layout]
    if kind == "torch.cnn" and kinds.count("image") != 1:
        raise SpecError(f"model.kind: torch.cnn needs exactly one image column in the features, found "
                        f"{kinds.count('image')} (feature blocks: {kinds}); use torch.mlp, or keep one image column"
                        + ("; PCA flattens images, remove features.pca" if "pca" in kinds else ""))
    if kind == "torch.audio" and kinds.count("audio") != 1:
        raise SpecError(f"model.kind: torch.audio needs exactly one audio column in the features, found "
                        f"{kinds.count('audio')} (feature blocks: {kinds}); use an audio source (data.source.type: "
                        "audio) and keep one audio column"
                        + ("; PCA flattens spectrograms, remove features.pca" if "pca" in kinds else ""))
    if kind == "torch.text" and "text" not in kinds:
        raise SpecError(f"model.kind: torch.text needs a text column in the features (feature blocks: {kinds}); "
                        "list it under features.text.columns" + ("; PCA hides it, remove features.pca" if "pca" in kinds else ""))


def _ints(v: Any) -> list[int]:
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def mlp(input_dim: int, hidden: list[int], n_outputs: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[Any] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _rest_index(layout: list[dict[str, Any]], block: dict[str, Any], input_dim: int) -> list[int]:
    """The feature columns outside ``block``."""
    return [i for i in range(input_dim) if not block["start"] <= i < block["stop"]]


class ImageCNN(nn.Module):
    """Conv → ReLU → max-pool stages over the image block, average-pooled to a ``pool`` x ``pool`` grid, MLP head.

    ``pool`` 1 is a global average pool: it forgets where a stroke is, which a digit's
    class depends on (24x24 digits, 1,000 steps: 0.72 test accuracy; 0.96 with ``pool`` 2,
    0.98 with 4). The grid is at most the last feature map's size (8x8 digits: 2x2). A
    model trained by raypipe gets ``pool`` :data:`CNN_POOL` in its stored params; a
    ``model.json`` without it was trained with the global pool, and loads as such.
    """

    def __init__(self, layout: list[dict[str, Any]], input_dim: int, n_outputs: int, *, channels: list[int],
                 kernel_size: int, hidden: list[int], dropout: float, pool: int = 1) -> None:
        super().__init__()
        check_layout("torch.cnn", layout)
        block = next(b for b in layout if b["kind"] == "image")
        h, w, *c = block["shape"]
        self.hwc = (int(h), int(w), int(c[0]) if c else 1)
        self.start, self.stop = block["start"], block["stop"]
        self.register_buffer("rest", torch.tensor(_rest_index(layout, block, input_dim), dtype=torch.long), persistent=False)
        convs: list[Any] = []
        width, size = self.hwc[2], min(self.hwc[:2])
        for ch in channels:
            convs += [nn.Conv2d(width, ch, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if size >= 4:  # pool while the map is big enough (8x8 digits: two pools)
                convs.append(nn.MaxPool2d(2))
                size //= 2
            width = ch
        self.convs = nn.Sequential(*convs)
        pool = max(1, min(pool, size))
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = mlp(width * pool * pool + len(self.rest), hidden, n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = self.hwc
        img = x[:, self.start:self.stop].reshape(-1, h, w, c).permute(0, 3, 1, 2)
        z = self.pool(self.convs(img)).flatten(1)
        if len(self.rest):
            z = torch.cat([z, x.index_select(1, self.rest)], dim=1)
        return self.head(z)


class AudioCNN(nn.Module):
    """Conv → BatchNorm → ReLU → max-pool stages over the log-mel block, max over time, MLP head.

    The spectrogram ``[n_mels, frames]`` is a one-channel image whose rows are mel bands.
    After the convolutions, frequency is average-pooled to ``bands`` rows and time is
    max-pooled to one column: a word counts wherever it starts in the clip, and where in the
    spectrum it sits is kept (an average over time washed out short words). BatchNorm
    steadies training across voices whose loudness differs.
    """

    def __init__(self, layout: list[dict[str, Any]], input_dim: int, n_outputs: int, *, channels: list[int],
                 kernel_size: int, hidden: list[int], dropout: float, bands: int = 4) -> None:
        super().__init__()
        check_layout("torch.audio", layout)
        block = next(b for b in layout if b["kind"] == "audio")
        mels, frames = int(block["shape"][0]), int(block["shape"][1])
        self.mf = (mels, frames)
        self.start, self.stop = block["start"], block["stop"]
        self.register_buffer("rest", torch.tensor(_rest_index(layout, block, input_dim), dtype=torch.long), persistent=False)
        convs: list[Any] = []
        width, size = 1, min(mels, frames)
        for ch in channels:
            convs += [nn.Conv2d(width, ch, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(ch), nn.ReLU()]
            if size >= 8:
                convs.append(nn.MaxPool2d(2))
                size //= 2
            width = ch
        self.convs = nn.Sequential(*convs)
        bands = max(1, min(bands, size))
        self.bands = nn.AdaptiveAvgPool2d((bands, None))
        self.head = mlp(width * bands + len(self.rest), hidden, n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mels, frames = self.mf
        spec = x[:, self.start:self.stop].reshape(-1, 1, mels, frames)
        z = self.bands(self.convs(spec)).amax(dim=3).flatten(1)
        if len(self.rest):
            z = torch.cat([z, x.index_select(1, self.rest)], dim=1)
        return self.head(z)


class TextBag(nn.Module):
    """``EmbeddingBag(mode="sum")`` over the text block's non-zero terms, weighted by their values."""

    def __init__(self, layout: list[dict[str, Any]], input_dim: int, n_outputs: int, *, embed_dim: int,
                 hidden: list[int], dropout: float) -> None:
        super().__init__()
        check_layout("torch.text", layout)
        blocks = [b for b in layout if b["kind"] == "text"]
        self.start, self.stop = blocks[0]["start"], blocks[-1]["stop"]  # text blocks are adjacent (one operator)
        span = {"kind": "text", "start": self.start, "stop": self.stop}
        self.register_buffer("rest", torch.tensor(_rest_index(layout, span, input_dim), dtype=torch.long), persistent=False)
        self.bag = nn.EmbeddingBag(self.stop - self.start, embed_dim, mode="sum")
        self.head = mlp(embed_dim + len(self.rest), hidden, n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        text = x[:, self.start:self.stop]
        rows, cols = torch.nonzero(text, as_tuple=True)  # row-major: each row's terms are contiguous
        counts = torch.bincount(rows, minlength=len(x))
        offsets = torch.cumsum(counts, 0) - counts
        z = self.bag(cols, offsets, per_sample_weights=text[rows, cols])
        if len(self.rest):
            z = torch.cat([z, x.index_select(1, self.rest)], dim=1)
        return self.head(z)
