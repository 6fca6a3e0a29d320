"""Unit tests for ``raypipe.model.formats``: safe model files (safetensors, allow-listed skops)."""
from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from raypipe.errors import ArtifactError, SpecError
from raypipe.store import Store
from raypipe.model.formats import (
    MODEL_JSON,
    SKOPS_FILE,
    TORCH_WEIGHTS,
    SklearnModel,
    TorchModel,
    build_mlp,
    import_estimator,
    load_model,
    load_skops,
    model_meta,
    save_model,
)


def data(n: int = 60, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


# --- torch ------------------------------------------------------------------------------------------
def test_torch_mlp_round_trip(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = build_mlp(5, [8, 4], 2)
    meta = model_meta("torch.mlp", "classification", 2, input_dim=5, hidden=[8, 4])
    store = Store(tmp_path / "model")
    save_model(store, meta, torch_state=net.state_dict())
    assert store.walk_files() == [MODEL_JSON, TORCH_WEIGHTS]
    assert json.loads((tmp_path / "model" / MODEL_JSON).read_text())["kind"] == "torch.mlp"

    model = load_model(store)
    assert isinstance(model, TorchModel) and model.task == "classification"
    x, _ = data()
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    got = model.predict_scores(x)
    assert got.shape == (len(x), 2) and got.dtype == np.float64
    assert np.array_equal(got, expected.astype(np.float64))
    assert np.allclose(got.sum(axis=1), 1.0)
    # not in training mode, deterministic
    assert np.array_equal(model.predict_scores(x), got)


def test_torch_model_on_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    """`raypipe predict` with train.use_gpu loads torch models on the actor's GPU (checked on an H100:
    benchmarks/gpu_predict_check.py); where CUDA is missing the error says what is wrong."""
    import torch

    net = build_mlp(5, [8], 2)
    store = Store(tmp_path / "model")
    save_model(store, model_meta("torch.mlp", "classification", 2, input_dim=5, hidden=[8]), torch_state=net.state_dict())
    if torch.cuda.is_available():
        assert load_model(store, "cuda").device.type == "cuda"
        return
    with pytest.raises(RuntimeError, match="CUDA is not available here"):
        load_model(store, "cuda")
    assert load_model(store).device.type == "cpu"


def test_torch_mlp_regression_round_trip(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(1)
    net = build_mlp(5, [6], 1, dropout=0.5)
    store = Store(tmp_path)
    save_model(store, model_meta("torch.mlp", "regression", 1, input_dim=5, hidden=[6], dropout=0.5), torch_state=net.state_dict())
    model = load_model(store)
    x, _ = data()
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[:, 0].numpy()
    got = model.predict_scores(x)
    assert got.shape == (len(x),)
    assert np.array_equal(got, expected.astype(np.float64))


# --- scikit-learn ------------------------------------------------------------------------------------------
def test_sklearn_logistic_regression_round_trip(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = data()
    est = LogisticRegression().fit(x, y)
    store = Store(tmp_path)
    save_model(store, model_meta("sklearn:sklearn.linear_model:LogisticRegression", "classification", 2), estimator=est)
    assert store.walk_files() == [MODEL_JSON, SKOPS_FILE]
    model = load_model(store)
    assert isinstance(model, SklearnModel)
    assert type(model.estimator) is LogisticRegression
    assert np.array_equal(model.predict_scores(x), est.predict_proba(x))
    assert np.array_equal(model.estimator.coef_, est.coef_)


def test_sklearn_missing_class_keeps_zero_probability(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = data()
    y = np.where(y == 1, 2, 0)  # class 1 of 3 never seen in training
    est = LogisticRegression().fit(x, y)
    store = Store(tmp_path)
    save_model(store, model_meta("sklearn:sklearn.linear_model:LogisticRegression", "classification", 3), estimator=est)
    scores = load_model(store).predict_scores(x)
    assert scores.shape == (len(x), 3)
    assert np.all(scores[:, 1] == 0)
    assert np.allclose(scores[:, [0, 2]], est.predict_proba(x))


def test_sklearn_hist_gradient_boosting_round_trip(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = data(200)
    est = HistGradientBoostingClassifier(max_iter=10).fit(x, y)
    store = Store(tmp_path)
    save_model(store, model_meta("sklearn:sklearn.ensemble:HistGradientBoostingClassifier", "classification", 2), estimator=est)
    assert np.array_equal(load_model(store).predict_scores(x), est.predict_proba(x))


class Gadget:
    """A type outside the allow-list."""

    def __init__(self) -> None:
        self.payload = "anything"


def helper_function(x):
    return x


def _save_sklearn(store: Store, est) -> None:
    save_model(store, model_meta("sklearn:x:Y", "classification", 2), estimator=est)


def test_skops_custom_class_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = data()
    est = LogisticRegression().fit(x, y)
    est.gadget_ = Gadget()
    store = Store(tmp_path)
    _save_sklearn(store, est)
    with pytest.raises(ArtifactError, match="Gadget"):
        load_model(store)


def test_skops_custom_function_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = data()
    est = make_pipeline(FunctionTransformer(func=helper_function), LogisticRegression()).fit(x, y)
    store = Store(tmp_path)
    _save_sklearn(store, est)
    with pytest.raises(ArtifactError, match="helper_function"):
        load_model(store)


def test_skops_allow_list_refuses_code_execution_gadgets(tmp_path: Path) -> None:
    """Only allow-listed *types* may load, but every ``builtins.*`` and ``numpy.*`` name passes
    the prefix check, functions included: ``builtins.eval`` in a FunctionTransformer chain runs
    code from the model file at predict time. Such a file must be refused at load."""
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer as F

    x, y = data()
    canary = tmp_path / "canary"
    code = f"open({str(canary)!r}, 'w').write('pwned')"
    est = Pipeline([
        ("fill", F(np.full_like, kw_args={"fill_value": code, "dtype": object})),  # every cell = the code
        ("flat", F(np.ravel)),
        ("one", F(builtins.max)),  # -> the code string
        ("run", F(builtins.eval)),
        ("clf", DummyClassifier()),
    ])
    est.steps[-1] = ("clf", DummyClassifier().fit(x, y))  # nothing runs while building the file
    store = Store(tmp_path / "model")
    _save_sklearn(store, est)
    assert not canary.exists()
    try:
        model = load_model(store)
    except ArtifactError:
        assert not canary.exists()
        return
    try:
        model.predict_scores(x[:2])
    except Exception:
        pass
    assert not canary.exists(), "a model file executed code at predict time"
    pytest.fail("a skops file holding builtins.eval passed the allow-list")


def test_load_skops_plain(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(data()[0])
    back = load_skops(sio.dumps(sc))
    assert np.array_equal(back.mean_, sc.mean_)


# --- files ---------------------------------------------------------------------------------------------------
def test_load_model_wrong_format(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_json(MODEL_JSON, {"format": "other/2", "kind": "torch.mlp"})
    with pytest.raises(ArtifactError, match="not a raypipe model"):
        load_model(store)


def test_load_model_missing_weights(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_json(MODEL_JSON, model_meta("torch.mlp", "classification", 2, input_dim=3, hidden=[2]))
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(store)


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_no_unpickling(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = pickle.dumps({"model": Evil(str(canary))})
    # sanity: this payload really would create the canary when unpickled
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Evil(str(probe)))).close()
    assert probe.exists()

    store = Store(tmp_path / "model")
    store.write_bytes(SKOPS_FILE, payload)
    store.write_json(MODEL_JSON, model_meta("sklearn:sklearn.linear_model:LogisticRegression", "classification", 2))
    with pytest.raises(Exception):
        load_model(store)
    assert not canary.exists()


def test_import_estimator() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    assert import_estimator("sklearn:sklearn.ensemble:HistGradientBoostingClassifier") is HistGradientBoostingClassifier
    assert import_estimator("sklearn:sklearn.linear_model.LogisticRegression") is LogisticRegression
    assert import_estimator("sklearn.linear_model:LogisticRegression") is LogisticRegression


@pytest.mark.parametrize(
    "kind", ["sklearn:no_such_module_xyz:Thing", "sklearn:sklearn.linear_model:NoSuchEstimator", "sklearn.linear_model.Nope"]
)
def test_import_estimator_bad_path(kind: str) -> None:
    with pytest.raises(SpecError) as info:
        import_estimator(kind)
    assert "model.kind" in str(info.value)
    assert kind.removeprefix("sklearn:") in str(info.value)
    assert info.value.exit_code == 2


def test_canonical_order_does_not_depend_on_the_incoming_row_order():
    import numpy as np

    from raypipe.train.sklearn_trainer import canonical_order

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 4)).astype(np.float32), rng.integers(0, 2, 500)
    perm = rng.permutation(500)
    a, b = canonical_order(x, y), canonical_order(x[perm], y[perm])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert sorted(map(tuple, a[0].tolist())) == sorted(map(tuple, x.tolist()))  # same rows, reordered
