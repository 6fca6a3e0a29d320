"""ONNX export: onnxruntime gives raypipe's features and answers for every exportable operator,
model family and task, and what has no ONNX form is refused by name."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from raypipe.errors import ExportError
from raypipe.export import export_onnx, onnx_feed
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.model.predictor import Predictor
from raypipe.model.formats import SklearnModel, TorchModel

N = 400


def _frame(seed: int = 0, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "amount": rng.exponential(50.0, n), "age": rng.normal(40, 12, n).round(), "flag": rng.random(n) < 0.3,
        "city": rng.choice(["oslo", "rome", "lima", "pune", "kiev"], n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
        "tier": rng.choice(["a", "b", "c"], n),
    })
    df.loc[df.index % 9 == 0, "amount"] = np.nan
    df.loc[df.index % 13 == 0, "age"] = np.inf
    df.loc[df.index % 11 == 0, "city"] = None
    return df


def _requests() -> pd.DataFrame:
    """Rows the training data never had: an unseen city, missing values, an extreme amount."""
    out = _frame(1, 60)
    out.loc[0, "city"], out.loc[1, "tier"], out.loc[2, "amount"], out.loc[3, "age"] = "atlantis", None, 1e9, None
    return out


def _run(path: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _export(predictor: Predictor, tmp_path, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    path = str(tmp_path / "model.onnx")
    export_onnx(predictor, path, pipeline="t")
    return _run(path, onnx_feed(predictor.features, rows))


def _sklearn(fp: FeaturePipeline, estimator, task: str, classes: list[str] | None = None,
             threshold: float = 0.5) -> Predictor:
    model = SklearnModel({"kind": f"sklearn:{type(estimator).__name__}", "task": task,
                          "n_outputs": len(classes) if classes else 1}, estimator)
    target = {"classes": classes, "type": "string", "task": task} if classes else {"type": "number", "task": task}
    return Predictor(fp, model, {"target": target}, threshold=threshold, version=3)


def _tabular() -> tuple[pd.DataFrame, FeaturePipeline, np.ndarray]:
    train = _frame(0)
    fp = FeaturePipeline(["amount", "age", "flag"], ["city", "tier"]).fit(train)
    return train, fp, fp.transform(train)


FEATURE_CASES = {
    "mean-standard-log": dict(impute="mean", scale="standard", log=["amount"]),
    "median-robust-clip": dict(impute="median", scale="robust", clip=[0.05, 0.95]),
    "constant-minmax-clip-log": dict(impute="constant", fill_value=-1.0, scale="minmax", clip=[0.0, 0.9],
                                     log=["amount"]),
    "onehot-other": dict(max_categories=2),
    "ordinal": dict(encode="ordinal", max_categories=3),
    "pca-whiten": dict(pca_components=3, whiten=True),
}


@pytest.mark.parametrize("settings", FEATURE_CASES.values(), ids=FEATURE_CASES.keys())
def test_features_match_for_every_operator_setting(settings, tmp_path):
    from sklearn.linear_model import Ridge

    train, rows = _frame(0), _requests()
    fp = FeaturePipeline(["amount", "age", "flag"], ["city", "tier"], **settings).fit(train)
    x = fp.transform(train)
    out = _export(_sklearn(fp, Ridge().fit(x, x[:, 0]), "regression"), tmp_path, rows)
    np.testing.assert_allclose(out["features"], fp.transform(rows), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,normalize", [([8, 8], "standard"), ([6, 5, 3], "unit")])
def test_image_features_match(shape, normalize, tmp_path):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"img": list(rng.integers(0, 256, (60, *shape)).astype(np.float64)), "x": rng.normal(size=60)})
    fp = FeaturePipeline(["x"], image=["img"], image_shapes={"img": shape}, image_normalize=normalize).fit(frame)
    x = fp.transform(frame)
    out = _export(_sklearn(fp, Ridge().fit(x, frame["x"]), "regression"), tmp_path, frame)
    np.testing.assert_allclose(out["features"], fp.transform(frame), rtol=1e-6, atol=1e-6)


def _same_decisions(got: np.ndarray, expected: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """Equal, except where float32 rounding can put a score on the other side of the threshold."""
    differ = got != expected
    assert np.all(np.abs(scores[differ] - threshold) < 1e-5), (got[differ], expected[differ])


def test_binary_classifier_scores_threshold_and_labels(tmp_path):
    from sklearn.linear_model import LogisticRegression

    train, fp, x = _tabular()
    rows = _requests()
    y = ((train["amount"].fillna(0) > 40) ^ (train["city"] == "rome")).astype(int).to_numpy()
    predictor = _sklearn(fp, LogisticRegression(max_iter=500).fit(x, y), "classification", ["no", "yes"], threshold=0.3)
    out = _export(predictor, tmp_path, rows)
    scores = predictor.scores(rows)
    np.testing.assert_allclose(out["scores"], scores, atol=1e-5)
    _same_decisions(out["class_index"], predictor.decide(scores), scores[:, 1], 0.3)
    assert 0 < out["class_index"].sum() < len(rows)  # the threshold (0.3, not 0.5) decided both ways
    assert list(out["label"]) == [["no", "yes"][k] for k in out["class_index"]]


def test_multiclass_forest_argmax_and_a_class_missing_from_training(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    train, fp, x = _tabular()
    rows = _requests()
    y = train["tier"].map({"a": 0, "b": 1, "c": 3}).to_numpy()  # class 2 never occurs in training
    est = RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0).fit(x, y)
    predictor = _sklearn(fp, est, "classification", ["a", "b", "x", "c"])
    out = _export(predictor, tmp_path, rows)
    scores = predictor.scores(rows)
    np.testing.assert_allclose(out["scores"], scores, atol=1e-5)
    assert np.all(out["scores"][:, 2] == 0)
    np.testing.assert_array_equal(out["class_index"], predictor.decide(scores))


def test_regression_clustering_and_anomaly_scores(tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import Ridge

    train, fp, x = _tabular()
    rows = _requests()
    reg = _sklearn(fp, Ridge().fit(x, train["age"].replace(np.inf, 40)), "regression")
    np.testing.assert_allclose(_export(reg, tmp_path, rows)["prediction"], reg.scores(rows), rtol=1e-5, atol=1e-4)

    clusters = _sklearn(fp, KMeans(4, n_init=3, random_state=0).fit(x), "clustering")
    np.testing.assert_array_equal(_export(clusters, tmp_path, rows)["cluster"], clusters.decide(clusters.scores(rows)))

    forest = IsolationForest(n_estimators=40, random_state=0).fit(x)
    anomaly = _sklearn(fp, forest, "anomaly", threshold=float(np.quantile(-forest.score_samples(x), 0.9)))
    out = _export(anomaly, tmp_path, rows)
    scores = anomaly.scores(rows)
    np.testing.assert_allclose(out["anomaly_score"], scores, atol=1e-5)
    _same_decisions(out["is_anomaly"].astype(int), anomaly.decide(scores), scores, anomaly.threshold)


@pytest.mark.parametrize("kind, pool", [("torch.mlp", None), ("torch.cnn", None), ("torch.cnn", 4)])
def test_torch_zoo_models(kind, pool, tmp_path):
    import torch

    from raypipe.model.zoo import build_model

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"img": list(rng.integers(0, 256, (50, 8, 8)).astype(np.float64)), "x": rng.normal(size=50),
                          "c": rng.choice(["u", "v"], 50)})
    fp = FeaturePipeline(["x"], ["c"], image=["img"], image_shapes={"img": [8, 8]}).fit(frame)
    torch.manual_seed(0)
    params = {"hidden": [16]} if kind == "torch.mlp" else {"channels": [4, 8], "hidden": [16]}
    if pool:
        params["pool"] = pool  # a 2x2 grid on the 8x8 image's last 2x2 map
    meta = {"format": "raypipe.model/1", "kind": kind, "task": "classification", "n_outputs": 3,
            "input_dim": fp.n_features, "layout": fp.layout(), "params": params}
    net = build_model(kind, input_dim=fp.n_features, n_outputs=3, layout=fp.layout(), params=params)
    predictor = Predictor(fp, TorchModel(meta, net.state_dict()), {"target": {"classes": ["p", "q", "r"]}}, version=1)
    out = _export(predictor, tmp_path, frame)
    scores = predictor.scores(frame)
    np.testing.assert_allclose(out["scores"], scores, atol=1e-5)
    np.testing.assert_array_equal(out["class_index"], predictor.decide(scores))


def test_torch_regression_on_a_standardised_target_exports_un_scaled_values(tmp_path):
    """A regression model trained on (y - mean) / std: the graph answers in the target's units, as the predictor."""
    import torch

    from raypipe.model.zoo import build_model

    frame = _frame()
    fp = FeaturePipeline(["amount", "age"], ["city"]).fit(frame)
    torch.manual_seed(0)
    scale = {"mean": 150.0, "std": 77.0}
    meta = {"format": "raypipe.model/1", "kind": "torch.mlp", "task": "regression", "n_outputs": 1,
            "input_dim": fp.n_features, "params": {"hidden": [8]}, "target_scale": scale}
    net = build_model("torch.mlp", input_dim=fp.n_features, n_outputs=1, params={"hidden": [8]}, target_scale=scale)
    predictor = Predictor(fp, TorchModel(meta, net.state_dict()), {"target": {"name": "y", "task": "regression"}},
                          version=1)
    out = _export(predictor, tmp_path, frame)
    values = predictor.scores(frame)
    assert abs(values.mean() - 150.0) < 50  # un-scaled: near the mean, not near 0
    np.testing.assert_allclose(out["prediction"].ravel(), values, rtol=1e-5, atol=1e-3)


def test_what_has_no_onnx_form_is_refused_by_name(tmp_path):
    from sklearn.linear_model import Ridge

    frame = pd.DataFrame({"x": np.arange(20.0), "c": ["a", "b"] * 10, "t": ["red fox", "blue fox"] * 10})
    fp = FeaturePipeline(["x"], ["c"], text=["t"], encode="hashing", hash_buckets=4, min_df=1).fit(frame)
    predictor = _sklearn(fp, Ridge().fit(fp.transform(frame), frame["x"]), "regression")
    with pytest.raises(ExportError) as info:
        export_onnx(predictor, str(tmp_path / "m.onnx"))
    assert len(info.value.problems) == 2 and info.value.exit_code == 2
    assert "features.categorical.encode: 'hashing'" in str(info.value) and "text columns ['t']" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_metadata_names_the_version_inputs_and_classes(tmp_path):
    import json

    import onnx
    from sklearn.linear_model import LogisticRegression

    train, fp, x = _tabular()
    predictor = _sklearn(fp, LogisticRegression(max_iter=300).fit(x, train["flag"].astype(int)), "classification",
                         ["0", "1"], threshold=0.4)
    result = export_onnx(predictor, str(tmp_path / "m.onnx"), pipeline="fraud")
    props = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert props["raypipe.pipeline"] == "fraud" and props["raypipe.version"] == "3"
    assert props["raypipe.threshold"] == "0.4" and json.loads(props["raypipe.classes"]) == ["0", "1"]
    assert [i["name"] for i in json.loads(props["raypipe.inputs"])] == ["amount", "age", "flag", "city", "tier"]
    assert result.outputs == ["features", "scores", "class_index", "label"]


def test_an_estimator_without_a_converter_is_refused_by_name(tmp_path):
    from sklearn.base import BaseEstimator, RegressorMixin

    class Median(RegressorMixin, BaseEstimator):
        def fit(self, x, y):
            self.value_ = float(np.median(y))
            return self

        def predict(self, x):
            return np.full(len(x), self.value_)

    train, fp, x = _tabular()
    with pytest.raises(ExportError, match="skl2onnx cannot convert Median"):
        export_onnx(_sklearn(fp, Median().fit(x, train["age"]), "regression"), str(tmp_path / "m.onnx"))


def test_datetime_features_are_refused_not_exported_wrong(tmp_path):
    from sklearn.linear_model import Ridge

    frame = pd.DataFrame({"x": np.arange(20.0), "when": [f"2024-03-{d:02d}T10:00:00Z" for d in range(1, 21)]})
    fp = FeaturePipeline(["x"], datetime=["when"]).fit(frame)
    predictor = _sklearn(fp, Ridge().fit(fp.transform(frame), frame["x"]), "regression")
    with pytest.raises(ExportError) as info:
        export_onnx(predictor, str(tmp_path / "m.onnx"))
    assert info.value.problems == [(
        "datetime features are not supported by ONNX export yet (columns ['when']); serve this pipeline with raypipe "
        "serve, or list them in data.id_columns to export without them")]
    assert not (tmp_path / "m.onnx").exists()
