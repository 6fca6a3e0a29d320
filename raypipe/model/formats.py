"""Model definitions and safe model files.

Torch weights are safetensors plus a JSON architecture; scikit-learn estimators are
skops files whose types are checked against an allow-list before loading. Nothing
here unpickles a file from storage.
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Protocol

import numpy as np

from raypipe.errors import ArtifactError, SpecError
from raypipe.store import Store
from raypipe.tasks import TASKS

MODEL_JSON = "model.json"
TORCH_WEIGHTS = "model.safetensors"
SKOPS_FILE = "model.skops"
# Beyond skops' own trusted list, a model file may hold classes (never functions:
# a function reference is a code-execution gadget) from these packages only.
SKOPS_ALLOWED_PACKAGES = ("sklearn", "numpy", "scipy")
TRUSTED_FACTORIES_ENV = "RAYPIPE_TRUSTED_FACTORIES"  # comma-separated torch:<module>:<factory> kinds


def trusted_factories(spec: Any = None) -> tuple[str, ...]:
    """The user factories a stored model may name, as this (deploying) process allows them.

    A stored ``model.json`` names the code that builds its network: a ``torch:<module>:<factory>``
    kind there is imported and called at load time. Its sha256 manifest lives in the same storage,
    so whoever can write storage could re-seal it: the allow-list therefore never comes from the
    artifact, only from the deployer: the spec's own ``model.kind`` and the environment variable
    ``RAYPIPE_TRUSTED_FACTORIES`` of the process that loads or deploys. Built-in kinds need none.
    """
    import os

    kinds = [k.strip() for k in os.environ.get(TRUSTED_FACTORIES_ENV, "").split(",") if k.strip()]
    if spec is not None and spec.model.kind.startswith("torch:"):
        kinds.append(spec.model.kind)
    return tuple(dict.fromkeys(kinds))


class Model(Protocol):
    task: str

    def predict_scores(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, k) for classification, values (n,) for regression."""


# --- torch -----------------------------------------------------------------------------
def build_mlp(input_dim: int, hidden: list[int], n_outputs: int, dropout: float = 0.0) -> Any:
    from raypipe.model.zoo import mlp

    return mlp(input_dim, hidden, n_outputs, dropout)


class TorchModel:
    """A trained zoo model (``torch.*`` kinds) for inference: eval mode, no grad, on ``device``
    (``cpu``, or ``cuda`` in a batch-inference actor that holds a GPU)."""

    def __init__(self, meta: dict[str, Any], state: dict[str, Any], device: str = "cpu",
                 trusted: tuple[str, ...] = ()) -> None:
        import torch

        from raypipe.model.zoo import build_model

        check_trusted(meta["kind"], trusted)
        self.meta, self.task = meta, meta["task"]
        params = meta.get("params")
        if params is None:  # a torch.mlp saved before the zoo: its architecture was hidden + dropout
            params = {"hidden": meta["hidden"], "dropout": meta.get("dropout", 0.0)}
        self.net = build_model(meta["kind"], input_dim=meta["input_dim"], n_outputs=meta["n_outputs"],
                               layout=meta.get("layout"), params=params, target_scale=meta.get("target_scale"))
        self.net.load_state_dict(state)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"model device {device!r}: CUDA is not available here (train.use_gpu needs a GPU node)")
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self._torch = torch

    def predict_scores(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            batch = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            out = self.net(batch).float()
            out = self._torch.softmax(out, dim=1) if TASKS[self.task].has_classes else out[:, 0]
            return out.cpu().numpy().astype(np.float64)


# --- scikit-learn ------------------------------------------------------------------------
def import_estimator(kind: str) -> Any:
    """The estimator class named by ``sklearn:<module>:<Class>`` (or ``module.Class``)."""
    path = kind.removeprefix("sklearn:")
    module, _, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"model.kind: cannot import {path!r} ({exc}); check the module and class name") from None


class SklearnModel:
    def __init__(self, meta: dict[str, Any], estimator: Any) -> None:
        self.meta, self.task, self.estimator = meta, meta["task"], estimator

    def predict_scores(self, x: np.ndarray) -> np.ndarray:
        scores = TASKS[self.task].scores
        if scores == "probabilities":
            proba = self.estimator.predict_proba(x)
            k = self.meta["n_outputs"]
            if proba.shape[1] == k:
                return proba
            full = np.zeros((len(x), k))  # a class missing from training keeps probability 0
            full[:, self.estimator.classes_.astype(int)] = proba
            return full
        if scores == "anomaly_score":
            return anomaly_score(self.estimator, x)
        return np.asarray(self.estimator.predict(x), dtype=np.float64)  # the value, or the cluster id


def anomaly_score(estimator: Any, x: np.ndarray) -> np.ndarray:
    """Higher = more anomalous, for any scikit-learn outlier detector.

    ``score_samples`` (IsolationForest, LocalOutlierFactor with novelty, OneClassSVM,
    EllipticEnvelope) is "higher = more normal", so it is negated.
    """
    fn = getattr(estimator, "score_samples", None) or getattr(estimator, "decision_function")
    return -np.asarray(fn(x), dtype=np.float64)


def skops_io() -> Any:
    """``skops.io``, imported without importing torch.

    On import skops lists scikit-learn's estimators (``sklearn.utils.all_estimators``), which
    imports every scikit-learn package, ``sklearn.externals.array_api_compat.torch`` among them,
    and that imports torch when it is installed: 0.9 of skops' 1.2-1.9 s on the 2-core machine,
    paid by every process that saves or loads a scikit-learn model (the driver, a Serve replica).
    That package holds no estimator, so it is left out while skops imports (an import that fails
    is skipped by the walk), then put back for anyone who wants it. Where torch is already
    imported nothing is left out.
    """
    import sys

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    compat = "sklearn.externals.array_api_compat.torch"
    skip = "torch" not in sys.modules and compat not in sys.modules
    if skip:
        sys.modules[compat] = None  # type: ignore[assignment]  # "import" raises ImportError
    try:
        import skops.io as sio
    finally:
        if skip and sys.modules.get(compat, 0) is None:
            del sys.modules[compat]
    return sio


def load_skops(data: bytes) -> Any:
    sio = skops_io()
    untrusted = sio.get_untrusted_types(data=data)
    refused = [t for t in untrusted if not _allowed_class(t)]
    if refused:
        raise ArtifactError(
            f"model file refused: it references {refused}, which are not classes from {SKOPS_ALLOWED_PACKAGES}"
        )
    return sio.loads(data, trusted=untrusted)


def _allowed_class(name: str) -> bool:
    """True for a class (not a function) defined in an allowed package."""
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] not in SKOPS_ALLOWED_PACKAGES:
        return False
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type)


# --- files ---------------------------------------------------------------------------------
def save_model(store: Store, meta: dict[str, Any], *, torch_state: dict[str, Any] | None = None, estimator: Any = None) -> None:
    if torch_state is not None:
        from safetensors.torch import save

        store.write_bytes(TORCH_WEIGHTS, save({k: v.detach().cpu().contiguous() for k, v in torch_state.items()}))
    if estimator is not None:
        store.write_bytes(SKOPS_FILE, skops_io().dumps(estimator))
    store.write_json(MODEL_JSON, meta)


def load_model(store: Store, device: str = "cpu", trusted: tuple[str, ...] = ()) -> Model:
    """Load a model folder written by :func:`save_model` (torch models onto ``device``).

    A user factory named by the model must be in ``trusted`` (see :func:`trusted_factories`).
    """
    meta = store.read_json(MODEL_JSON)
    if meta.get("format") != "raypipe.model/1":
        raise ArtifactError(f"{store.full_uri(MODEL_JSON)}: not a raypipe model (format {meta.get('format')!r})")
    if meta["kind"].startswith("torch"):
        from safetensors.torch import load

        check_trusted(meta["kind"], trusted)  # before any byte of the weights is read
        return TorchModel(meta, load(store.read_bytes(TORCH_WEIGHTS)), device, trusted)
    return SklearnModel(meta, load_skops(store.read_bytes(SKOPS_FILE)))


def check_trusted(kind: str, trusted: tuple[str, ...]) -> None:
    """Refuse a stored model whose kind names a user factory this process does not trust."""
    if kind.startswith("torch:") and kind not in trusted:
        raise ArtifactError(
            f"model.json names the factory {kind!r}, which this process does not trust: a stored model never "
            f"decides what code runs. Deploy with the spec whose model.kind is {kind!r}, or add it to the "
            f"{TRUSTED_FACTORIES_ENV} environment variable of the deploying process")


def model_meta(kind: str, task: str, n_outputs: int, **extra: Any) -> dict[str, Any]:
    return {"format": "raypipe.model/1", "kind": kind, "task": task, "n_outputs": n_outputs, **extra}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
