"""Feature operators: one-pass fits from block statistics, train/serve parity, JSON state.

For every operator and option: fitting on one pandas frame and on a three-block Ray
dataset gives the same state (exact to 1e-9 where the statistics are sums or counts;
within a tolerance where they come from the quantile sketch), and the output of Ray
Data batches equals, bit for bit, that of single request rows (dict or 1-row frame).
"""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raypipe.errors import ArtifactError
from raypipe.model.features import pipeline as pipeline_module
from raypipe.model.features.base import Operator
from raypipe.model.features.categorical import OTHER, CategoricalEncoder
from raypipe.model.features.image import ImageTransformer
from raypipe.model.features.numeric import IMPUTE, SCALE, NumericTransformer, signed_log1p
from raypipe.model.features.pca import PcaReducer
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.model.features.text import TextVectorizer

NUMERIC = ["amount", "age", "delta", "hour", "card_present"]
CATEGORICAL = ["country", "device"]
TEXT = ["review"]
IMAGE = ["img", "gray"]
SHAPES = {"img": [4, 4, 3], "gray": [3, 3]}
WORDS = ["fast", "shipping", "Great", "great", "product", "broken", "refund", "love", "slow", "cheap",
         "quality", "box", "the", "arrived", "late"]


# --- data ----------------------------------------------------------------------------
def make_frame(n: int = 300, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.0, n)
    amount[rng.random(n) < 0.05] = np.nan
    age = rng.normal(40, 12, n)
    age[rng.random(n) < 0.1] = np.nan
    country = rng.choice(["US", "DE", "FR", "JP", "BR", "IT"], size=n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]).astype(object)
    country[rng.random(n) < 0.05] = None
    device = rng.choice(["pos", "mobile", "web"], size=n).astype(object)
    device[rng.random(n) < 0.1] = None
    review = np.array([" ".join(rng.choice(WORDS, size=rng.integers(0, 9))) for _ in range(n)], dtype=object)
    review[rng.random(n) < 0.1] = None
    img = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(n, 3, 3), dtype=np.uint8)
    return pd.DataFrame({
        "id": np.arange(n),
        "amount": amount,
        "age": age,
        "delta": rng.normal(0, 50, n),
        "hour": rng.integers(0, 24, n),
        "card_present": rng.random(n) < 0.3,
        "country": pd.Series(country, dtype=object),
        "device": pd.Series(device, dtype=object),
        "review": pd.Series(review, dtype=object),
        "img": pd.Series(list(img), dtype=object),
        "gray": pd.Series(list(gray), dtype=object),
    })


def make_test_frame() -> pd.DataFrame:
    """Rows a model meets after training: unseen values, missing values, NaN, inf."""
    df = make_frame(40, seed=9)
    df.loc[0, "country"] = "Atlantis"                       # unseen
    df.loc[1, ["amount", "age", "delta"]] = [np.inf, -np.inf, np.nan]
    df.loc[2, ["country", "device", "review"]] = None
    df.loc[3, "review"] = "zebra quokka unseen words only"
    df.loc[4, "amount"] = 1e9                               # far outside the training range
    df.loc[5, "delta"] = -1e6
    df["card_present"] = df["card_present"].astype(object)
    df.loc[6, "card_present"] = None
    df.loc[7, ["amount", "age", "delta", "hour"]] = None
    return df


def blocks(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Three unequal blocks."""
    return [df.iloc[: len(df) // 4], df.iloc[len(df) // 4: len(df) * 2 // 3], df.iloc[len(df) * 2 // 3:]]


def to_ray(df: pd.DataFrame) -> Any:
    import ray

    ds = ray.data.from_pandas(blocks(df))
    assert ds.num_blocks() == 3
    return ds


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON request carries them: NaN -> None, arrays -> nested lists."""
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and np.isnan(v):
            return None
        return v
    return json.loads(json.dumps([{k: plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]))


# --- operators under test ----------------------------------------------------------------
def _numeric_cases() -> list[tuple[str, Operator]]:
    variants = [(None, []), ((0.05, 0.95), []), (None, ["amount", "delta"]), ((0.02, 0.9), ["delta"])]
    return [
        (f"numeric-{imp}-{sc}-clip{clip}-log{len(log)}", NumericTransformer(NUMERIC, impute=imp, fill_value=-3.0,
                                                                             scale=sc, clip=clip, log=log))
        for imp in IMPUTE for sc in SCALE for clip, log in variants
    ]


CASES: list[tuple[str, Operator]] = [
    *_numeric_cases(),
    *[(f"categorical-{e}-{m}", CategoricalEncoder(CATEGORICAL, encode=e, max_categories=m, hash_buckets=8))
      for e in ("onehot", "ordinal", "hashing") for m in (2, 32)],
    ("text-tfidf", TextVectorizer(TEXT, min_df=2)),
    ("text-tfidf-bigrams", TextVectorizer(TEXT, ngram_range=(1, 2), min_df=1, max_features=10, lowercase=False)),
    ("text-hashing", TextVectorizer(TEXT, method="hashing", max_features=32, ngram_range=(1, 2))),
    ("image-standard", ImageTransformer(IMAGE, shapes=SHAPES, normalize="standard")),
    ("image-unit", ImageTransformer(IMAGE, shapes=SHAPES, normalize="unit")),
]
IDS = [name for name, _ in CASES]


def clone(op: Operator) -> Operator:
    return type(op)(**op.get_params())


def approximate_keys(op: Operator) -> set[str]:
    """State entries estimated from the quantile sketch (not exactly mergeable)."""
    if not isinstance(op, NumericTransformer):
        return set()
    keys = {"impute_values_"} if op.impute == "median" else set()
    if op.clip is not None:
        keys |= {"clip_", "centers_", "scales_"}
    if op.scale == "robust":
        keys |= {"centers_", "scales_"}
    return keys


def assert_close(a: Any, b: Any, rel: float, abs_: float, path: str = "") -> None:
    """Same structure; equal strings/ints/bools; floats within tolerance."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, rel, abs_, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=rel, abs=abs_), (path, a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def assert_same_state(whole: Operator, merged: Operator, train: pd.DataFrame) -> None:
    """Exact entries to 1e-9; sketch-based ones within 2% of the column's spread."""
    approx = approximate_keys(whole)
    a, b = whole.to_dict(), merged.to_dict()
    assert a["params"] == b["params"]
    for key in a["state"]:
        if key not in approx:
            assert_close(a["state"][key], b["state"][key], rel=1e-9, abs_=1e-12, path=key)
            continue
        for c, value in a["state"][key].items():
            raw = train[c].astype(float).replace([np.inf, -np.inf], np.nan)
            spread = float(raw.quantile(0.75) - raw.quantile(0.25)) if key in ("impute_values_", "clip_") \
                else whole.scales_[c]
            assert_close(value, b["state"][key][c], rel=0.02, abs_=0.02 * spread, path=f"{key}.{c}")


def ray_fit(ops: list[Operator], ds: Any) -> list[Operator]:
    """Fit every operator from per-block statistics, in one pass over the dataset."""
    parts = ds.map_batches(
        lambda b: {"stats": [json.dumps([op.partial_stats(b) for op in ops])]}, batch_format="pandas", batch_size=None
    ).take_all()
    assert len(parts) == 3
    stats = [json.loads(p["stats"]) for p in parts]
    return [op.fit_from_stats([s[i] for s in stats]) for i, op in enumerate(ops)]


def ray_transform(transforms: list[Any], ds: Any, batch_format: str = "pandas") -> list[np.ndarray]:
    """Each transform's output on the dataset, via ``map_batches``, in ``id`` order."""
    def apply(b: Any) -> dict[str, np.ndarray]:
        out = {"id": np.asarray(b["id"])}
        for i, t in enumerate(transforms):
            out[f"x{i}"] = t(b)
        return out

    rows = sorted(ds.map_batches(apply, batch_format=batch_format, batch_size=7).take_all(), key=lambda r: r["id"])
    return [np.stack([np.asarray(r[f"x{i}"]) for r in rows]) for i in range(len(transforms))]


@pytest.fixture(scope="module")
def operators(ray_session) -> dict[str, Any]:
    train, test = make_frame(3000), make_test_frame()  # blocks of 750+1250+1000 rows: tails well sketched
    whole = [clone(op).fit(train) for _, op in CASES]
    merged = ray_fit([clone(op) for _, op in CASES], to_ray(train))
    served = ray_transform([op.transform for op in whole], to_ray(test))
    return {"train": train, "test": test, "whole": whole, "merged": merged, "ray": served}


# --- every operator, every option ----------------------------------------------------
@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_ray_fit_equals_pandas_fit(operators: dict[str, Any], i: int) -> None:
    assert_same_state(operators["whole"][i], operators["merged"][i], operators["train"])
    assert operators["whole"][i].feature_names == operators["merged"][i].feature_names


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_ray_batches_equal_single_rows(operators: dict[str, Any], i: int) -> None:
    op, test, served = operators["whole"][i], operators["test"], operators["ray"][i]
    assert served.dtype == np.float32 and served.shape == (len(test), op.n_features)
    assert np.array_equal(served, op.transform(test))
    for k, rec in enumerate(records(test)):
        one = op.transform({c: [v] for c, v in rec.items()})
        assert one.shape == (1, op.n_features) and one.dtype == np.float32
        assert np.array_equal(one[0], served[k]), (k, rec)
        assert np.array_equal(op.transform(pd.DataFrame([rec]))[0], served[k]), k
        assert np.array_equal(op.transform(test.iloc[[k]])[0], served[k]), k


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_json_round_trip(operators: dict[str, Any], i: int) -> None:
    op, test = operators["whole"][i], operators["test"]
    d = json.loads(json.dumps(op.to_dict(), allow_nan=False))
    back = type(op).from_dict(d)
    assert back.to_dict() == d
    assert back.feature_names == op.feature_names
    assert np.array_equal(back.transform(test), op.transform(test))


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_unfitted_operator_refuses(i: int) -> None:
    op = clone(CASES[i][1])
    with pytest.raises(RuntimeError, match="must be fitted"):
        op.transform(make_frame(3))


def test_outputs_are_finite(operators: dict[str, Any]) -> None:
    for (name, _), x in zip(CASES, operators["ray"]):
        if name.startswith("categorical-ordinal"):
            assert (x >= -1).all()
        assert np.isfinite(x).all(), name


# --- numeric -----------------------------------------------------------------------
def test_numeric_order_impute_clip_log_scale() -> None:
    df = make_frame()
    op = NumericTransformer(["delta", "amount"], impute="constant", fill_value=-500.0, clip=(0.1, 0.9),
                            log=["delta"], scale="standard").fit(df)
    lo, hi = op.clip_["delta"]
    assert lo == pytest.approx(np.nanquantile(df["delta"], 0.1)) and hi == pytest.approx(np.nanquantile(df["delta"], 0.9))
    raw = np.array([np.nan, -500.0, 1e6, 0.0, 3.0])
    filled = np.where(np.isnan(raw), -500.0, raw)
    expected = (signed_log1p(np.clip(filled, lo, hi)) - op.centers_["delta"]) / op.scales_["delta"]
    got = op.transform({"delta": raw, "amount": np.ones(5)})[:, 0]
    assert np.array_equal(got, expected.astype(np.float32))
    assert got[0] == got[1]  # the fill value (-500) is clipped like any value
    assert "amount" not in op.log and op.clip_["amount"][0] <= op.clip_["amount"][1]


def test_numeric_scaling_statistics_follow_clip_and_log() -> None:
    df = make_frame(5000, seed=4)
    x = df["amount"].dropna().to_numpy()
    # log without clip: exact moments of the log values
    op = NumericTransformer(["amount"], log=["amount"], scale="standard").fit(df)
    assert op.centers_["amount"] == pytest.approx(signed_log1p(x).mean(), rel=1e-12)
    assert op.scales_["amount"] == pytest.approx(signed_log1p(x).std(), rel=1e-9)
    # clip: moments estimated from the sketch
    op = NumericTransformer(["amount"], clip=(0.05, 0.95), scale="standard").fit(df)
    clipped = np.clip(x, *np.quantile(x, [0.05, 0.95]))
    assert op.centers_["amount"] == pytest.approx(clipped.mean(), rel=0.01)
    assert op.scales_["amount"] == pytest.approx(clipped.std(), rel=0.01)
    # robust: median and IQR of the transformed values
    op = NumericTransformer(["amount"], log=["amount"], scale="robust").fit(df)
    q25, q50, q75 = np.quantile(signed_log1p(x), [0.25, 0.5, 0.75])
    assert op.centers_["amount"] == pytest.approx(q50, rel=1e-3)
    assert op.scales_["amount"] == pytest.approx(q75 - q25, rel=1e-2)
    # minmax after clip: the clip bounds map to 0 and 1
    op = NumericTransformer(["amount"], clip=(0.01, 0.99), scale="minmax").fit(df)
    out = op.transform(pd.DataFrame({"amount": [-1e9, 1e9, np.nan]}))[:, 0]
    assert out[0] == pytest.approx(0.0, abs=1e-6) and out[1] == pytest.approx(1.0, abs=1e-6)


def test_numeric_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        NumericTransformer(["a"], log=["nope"])
    with pytest.raises(ValueError, match="clip"):
        NumericTransformer(["a"], clip=(0.9, 0.1))
    with pytest.raises(ValueError, match="scale"):
        NumericTransformer(["a"], scale="zscore")


# --- categorical ----------------------------------------------------------------------
def test_ordinal_codes() -> None:
    train = pd.DataFrame({"c": ["b", "a", "b", "c", "b", "a", "d"]})
    op = CategoricalEncoder(["c"], encode="ordinal", max_categories=2).fit(train)
    assert op.categories_["c"] == ["b", "a"]
    x = op.transform({"c": ["a", "b", "c", "zzz", None, float("nan")]})
    assert x[:, 0].tolist() == [1, 0, 2, 2, -1, -1]
    assert op.feature_names == ["c"]


def test_onehot_other_and_missing() -> None:
    op = CategoricalEncoder(["c"], max_categories=2).fit(pd.DataFrame({"c": ["b", "a", "b", "c", "a"]}))
    assert op.feature_names == ["c=a", "c=b", f"c={OTHER}"]
    assert op.transform({"c": ["a", "c", "new", None]}).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_hashing_is_stable_and_compares_strings() -> None:
    op = CategoricalEncoder(["c"], encode="hashing", hash_buckets=16).fit(pd.DataFrame({"c": ["x"]}))
    assert op.to_dict()["state"] == {"categories_": {}}
    x = op.transform({"c": ["3", 3, "never seen", None]})
    assert np.array_equal(x[0], x[1])  # compared as strings
    assert x[:3].sum(axis=1).tolist() == [1, 1, 1] and x[3].sum() == 0
    # a fixed key: the same bucket in every process and release
    bucket = int(np.argmax(op.transform({"c": ["US"]})[0]))
    assert bucket == int(pd.util.hash_array(np.array(["US"], dtype=object), hash_key="raypipe-features")[0] % 16)
    assert op.feature_names[:2] == ["c#0", "c#1"]


def test_categories_compared_as_strings() -> None:
    op = CategoricalEncoder(["c"]).fit(pd.DataFrame({"c": pd.Series([1, 2, 2, None], dtype=object)}))
    assert op.categories_["c"] == ["2", "1"]
    assert np.array_equal(op.transform({"c": [2]}), op.transform({"c": ["2"]}))


# --- text ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"ngram_range": (1, 2)}, {"lowercase": False, "min_df": 1}])
def test_tfidf_matches_sklearn(kw: dict[str, Any]) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    df = make_frame(500, seed=2)
    params = {"min_df": 2, "ngram_range": (1, 1), "lowercase": True, **kw}
    op = TextVectorizer(["review"], **params).fit(df)
    docs = df["review"].fillna("").tolist()
    ref = TfidfVectorizer(**params)
    expected = ref.fit_transform(docs).toarray()
    assert op.vocabulary_["review"] == list(ref.get_feature_names_out())
    assert np.allclose(op.idf_["review"], ref.idf_, rtol=1e-12)
    assert np.allclose(op.transform(df), expected, atol=1e-6)


def test_tfidf_keeps_top_terms_by_document_frequency() -> None:
    docs = ["bb aa cc", "AA bb", "aa dd", "bb dd", "ee ee ee ee"]  # df: aa 3, bb 3, dd 2, cc 1, ee 1
    op = TextVectorizer(["t"], max_features=3, min_df=1, lowercase=True).fit(pd.DataFrame({"t": docs}))
    assert op.vocabulary_["t"] == ["aa", "bb", "dd"]
    op = TextVectorizer(["t"], max_features=4, min_df=1).fit(pd.DataFrame({"t": docs}))
    assert op.vocabulary_["t"] == ["aa", "bb", "cc", "dd"]  # cc and ee tie: the term decides
    with pytest.raises(ValueError, match="'t'.*min_df=9"):
        TextVectorizer(["t"], min_df=9).fit(pd.DataFrame({"t": docs}))


def test_missing_text_is_empty_string() -> None:
    df = make_frame()
    for method in ("tfidf", "hashing"):
        op = TextVectorizer(["review"], method=method, max_features=64).fit(df)
        x = op.transform({"review": [None, float("nan"), "", "great box"]})
        assert np.array_equal(x[0], x[2]) and np.array_equal(x[1], x[2]) and not x[2].any()
        assert np.linalg.norm(x[3]) == pytest.approx(1.0, abs=1e-6)


def test_text_hashing_matches_sklearn() -> None:
    from sklearn.feature_extraction.text import HashingVectorizer

    df = make_frame()
    op = TextVectorizer(["review"], method="hashing", max_features=128).fit(df)
    ref = HashingVectorizer(n_features=128, alternate_sign=False, norm="l2")
    assert np.array_equal(op.transform(df), ref.transform(df["review"].fillna("")).toarray().astype(np.float32))


# --- image ---------------------------------------------------------------------------------
def test_image_standardisation_per_channel() -> None:
    df = make_frame()
    op = ImageTransformer(["img"], shapes={"img": [4, 4, 3]}).fit(df)
    pixels = np.stack(df["img"].tolist()).astype(np.float64) / 255
    assert np.allclose(op.mean_["img"], pixels.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    assert np.allclose(op.std_["img"], pixels.reshape(-1, 3).std(axis=0), rtol=1e-9)
    x = op.transform(df)
    assert x.shape == (len(df), 48) and op.feature_names[:2] == ["img[0]", "img[1]"]
    per_channel = x.reshape(-1, 4, 4, 3).reshape(-1, 3)
    assert np.allclose(per_channel.mean(axis=0), 0, atol=1e-5) and np.allclose(per_channel.std(axis=0), 1, atol=1e-4)
    unit = ImageTransformer(["img"], shapes={"img": [4, 4, 3]}, normalize="unit").fit(df)
    assert np.array_equal(unit.transform(df), pixels.reshape(len(df), -1).astype(np.float32))  # C order


def test_image_inputs_agree_and_wrong_shape_is_named() -> None:
    from ray.data._internal.tensor_extensions.pandas import TensorArray

    df = make_frame(20)
    op = ImageTransformer(["img"], shapes={"img": [4, 4, 3]}).fit(df)
    stacked = np.stack(df["img"].tolist())
    x = op.transform(df)
    assert np.array_equal(op.transform({"img": stacked}), x)                          # numpy batch
    assert np.array_equal(op.transform(pd.DataFrame({"img": TensorArray(stacked)})), x)  # tensor column
    assert np.array_equal(op.transform({"img": [stacked[3].tolist()]})[0], x[3])      # request: nested lists
    with pytest.raises(ValueError, match=r"'img'.*\[4, 4, 3\].*\[4, 4\]"):
        op.transform({"img": [stacked[0][..., 0].tolist()]})
    with pytest.raises(ValueError, match=r"'img'.*\[4, 4, 3\].*\[3, 4, 3\]"):
        op.transform({"img": stacked[:3, :3]})
    missing = op.transform({"img": [None]})
    assert missing.shape == (1, 48) and not missing.any()


def test_image_single_channel_may_be_explicit_or_not() -> None:
    df = make_frame(20)
    gray = np.stack(df["gray"].tolist())
    op = ImageTransformer(["gray"], shapes={"gray": [3, 3, 1]}).fit(df)
    x = op.transform(df)
    assert x.shape == (20, 9) and op.mean_["gray"] == ImageTransformer(["gray"], shapes=SHAPES).fit(df).mean_["gray"]
    assert np.array_equal(op.transform({"gray": gray[..., None]}), x)
    assert np.array_equal(op.transform({"gray": [gray[5][..., None].tolist()]})[0], x[5])
    with pytest.raises(ValueError, match=r"'gray'.*\[3, 3, 1\].*\[3, 3, 2\]"):
        op.transform({"gray": [np.zeros((3, 3, 2))]})


def test_image_needs_shapes() -> None:
    with pytest.raises(ValueError, match="'img'"):
        ImageTransformer(["img"], shapes={})


# --- PCA ---------------------------------------------------------------------------------
def pca_data(n: int = 600, d: int = 7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.1])[:d]
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (rng.normal(size=(n, d)) * scales) @ rotation.T + rng.normal(size=d) * 10


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn(whiten: bool) -> None:
    from sklearn.decomposition import PCA

    x = pca_data()
    op = PcaReducer(3, whiten=whiten).fit(x)
    ref = PCA(3, whiten=whiten, svd_solver="full").fit(x)
    assert np.allclose(op.explained_variance_, ref.explained_variance_, rtol=1e-9)
    assert np.allclose(op.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-9)
    comps = np.asarray(op.components_)
    signs = np.sign(np.sum(comps * ref.components_, axis=1))
    assert np.allclose(comps, ref.components_ * signs[:, None], atol=1e-9)
    assert np.allclose(op.transform(x), ref.transform(x) * signs, atol=1e-4, rtol=1e-5)
    # sign rule: the largest-magnitude loading is positive
    assert all(c[np.argmax(np.abs(c))] > 0 for c in comps)


def test_pca_from_block_stats_and_row_parity() -> None:
    x = pca_data()
    whole = PcaReducer(4, whiten=True).fit(x)
    parts = [json.loads(json.dumps(PcaReducer(4).partial_stats(b))) for b in np.array_split(x, [50, 51, 400])]
    merged = PcaReducer(4, whiten=True).fit_from_stats(parts)
    assert_close(whole.to_dict(), merged.to_dict(), rel=1e-9, abs_=1e-9)
    batch = whole.transform(x)
    assert all(np.array_equal(whole.transform(x[i: i + 1])[0], batch[i]) for i in range(0, len(x), 7))
    back = PcaReducer.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert np.array_equal(back.transform(x), batch)


def test_pca_errors() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        PcaReducer(9).fit(pca_data())
    with pytest.raises(ValueError, match="two"):
        PcaReducer(1).fit(pca_data()[:1])


# --- the pipeline --------------------------------------------------------------------------
PIPELINE_KW: dict[str, Any] = {
    "text": TEXT, "image": IMAGE, "image_shapes": SHAPES, "clip": (0.02, 0.98), "log": ["amount"], "scale": "robust",
    "encode": "onehot", "max_categories": 4, "min_df": 2, "ngram_range": (1, 2),
}
EXACT_PCA_KW: dict[str, Any] = {  # only exactly mergeable statistics: Ray and pandas fits agree to 1e-9
    "text": TEXT, "image": ["gray"], "image_shapes": SHAPES, "impute": "mean", "log": ["amount"], "scale": "standard",
    "encode": "ordinal", "text_method": "tfidf", "min_df": 3, "pca_components": 5, "whiten": True,
}


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = pipeline_module._block_stats

    def counted(ds: Any, stats: Any) -> Any:
        calls.append(1)
        return original(ds, stats)

    monkeypatch.setattr(pipeline_module, "_block_stats", counted)
    return calls


@pytest.mark.parametrize("kw", [PIPELINE_KW, EXACT_PCA_KW], ids=["all-operators", "pca"])
def test_pipeline_ray_fit_and_parity(ray_session, monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any]) -> None:
    train, test = make_frame(3000), make_test_frame()
    whole = FeaturePipeline(NUMERIC, CATEGORICAL, **kw).fit(train)
    passes = _count_passes(monkeypatch)
    merged = FeaturePipeline(NUMERIC, CATEGORICAL, **kw).fit(to_ray(train))
    assert len(passes) == (2 if kw.get("pca_components") else 1)
    assert merged.feature_names_ == whole.feature_names_
    for a, b in zip(whole.operators, merged.operators):
        assert_same_state(a, b, train)
    if whole.pca is not None:
        assert_close(whole.pca.to_dict(), merged.pca.to_dict(), rel=1e-9, abs_=1e-9)
        assert whole.n_features == 5 and whole.feature_names_[0] == "pca[0]"
    fp = merged
    served_pandas, served_numpy = ray_transform([fp.transform], to_ray(test))[0], ray_transform(
        [fp.transform], to_ray(test), batch_format="numpy")[0]
    assert served_pandas.shape == (len(test), fp.n_features) and served_pandas.dtype == np.float32
    assert np.array_equal(served_pandas, served_numpy)
    assert np.array_equal(served_pandas, fp.transform(test))
    recs = records(test)
    for k, rec in enumerate(recs):
        assert np.array_equal(fp.transform(rec)[0], served_pandas[k]), k                       # one record
        assert np.array_equal(fp.transform({c: [v] for c, v in rec.items()})[0], served_pandas[k]), k
        assert np.array_equal(fp.transform(pd.DataFrame([rec]))[0], served_pandas[k]), k
    assert np.array_equal(fp.transform(recs), served_pandas)                                  # list of records
    back = FeaturePipeline.from_dict(json.loads(json.dumps(fp.to_dict(), allow_nan=False)))
    assert back.to_dict() == json.loads(json.dumps(fp.to_dict()))
    assert np.array_equal(back.transform(test), served_pandas)


def test_pipeline_format() -> None:
    fp = FeaturePipeline(NUMERIC, CATEGORICAL, **PIPELINE_KW).fit(make_frame())
    d = fp.to_dict()
    assert d["format"] == "raypipe.features/2"
    assert [o["kind"] for o in d["operators"]] == ["numeric", "categorical", "text", "image"]
    assert d["pca"] is None and d["feature_names"] == fp.feature_names_
    assert set(fp.operators[0].impute_values_) == set(fp.operators[0].centers_) == set(NUMERIC)
    assert fp.n_features == sum(op.n_features for op in fp.operators)


def test_pipeline_rejects_inconsistent_dicts() -> None:
    fp = FeaturePipeline(NUMERIC, CATEGORICAL, max_categories=3).fit(make_frame())
    d = fp.to_dict()
    with pytest.raises(ArtifactError):
        FeaturePipeline.from_dict({**d, "feature_names": d["feature_names"][:-1]})
    with pytest.raises(ArtifactError):
        FeaturePipeline.from_dict({**d, "operators": d["operators"][:1]})
    with pytest.raises(ArtifactError):
        FeaturePipeline.from_dict({"format": "raypipe.features/3"})


def test_pipeline_rejects_a_column_in_two_groups() -> None:
    with pytest.raises(ValueError, match="'review'"):
        FeaturePipeline(["amount"], ["review"], text=["review"])


def test_v1_dicts_are_refused() -> None:
    """``raypipe.features/1`` (the single-class pipeline of raypipe 0.x) no longer loads."""
    with pytest.raises(ArtifactError, match="must be retrained"):
        FeaturePipeline.from_dict({"format": "raypipe.features/1", "params": {}, "state": {}})


# --- from the spec and schema (stage.build) ------------------------------------------
SCHEMA = {
    "columns": {"img": {"type": "image", "shape": [4, 4, 3]}, "gray": {"type": "image", "shape": [3, 3]}},
    "features": {"numeric": NUMERIC, "categorical": [*CATEGORICAL, "review"], "text": [], "image": IMAGE},
}


def features_section(**sections: Any) -> Any:
    from raypipe.spec import FeaturesSection

    return FeaturesSection(**sections)


def test_build_uses_every_option() -> None:
    from raypipe.features.stage import build

    f = features_section(
        numeric={"impute": "constant", "fill_value": 1.5, "clip": [0.01, 0.99], "log": ["amount"], "scale": "robust"},
        categorical={"encode": "hashing", "hash_buckets": 16, "max_categories": 5, "sketch_size": 64},
        text={"columns": ["review"], "method": "hashing", "max_features": 64, "ngram_range": [1, 2], "min_df": 1,
              "lowercase": False},
        image={"normalize": "unit"},
        pca={"components": 6, "whiten": True},
    )
    fp = build(SimpleNamespace(features=f), SCHEMA)
    numeric, categorical, text, image = fp.operators
    assert numeric.get_params() == {"columns": NUMERIC, "impute": "constant", "fill_value": 1.5, "clip": [0.01, 0.99],
                                    "log": ["amount"], "scale": "robust"}
    assert categorical.get_params() == {"columns": CATEGORICAL, "encode": "hashing", "max_categories": 5,
                                        "hash_buckets": 16, "sketch_size": 64}
    assert text.get_params() == {"columns": ["review"], "method": "hashing", "max_features": 64, "ngram_range": [1, 2],
                                 "min_df": 1, "lowercase": False}
    assert image.get_params() == {"columns": IMAGE, "shapes": SHAPES, "normalize": "unit"}
    assert fp.pca is not None and fp.pca.get_params() == {"components": 6, "whiten": True}
    fp.fit(make_frame())
    assert fp.n_features == 6 and fp.transform(make_test_frame()).shape == (40, 6)


def test_build_with_an_old_schema_and_default_options() -> None:
    from raypipe.features.stage import build

    old = {"columns": {}, "features": {"numeric": ["amount", "age"], "categorical": ["country"]}}
    fp = build(SimpleNamespace(features=features_section()), old)
    assert [op.kind for op in fp.operators] == ["numeric", "categorical"] and fp.pca is None
    ref = FeaturePipeline(["amount", "age"], ["country"])  # the old constructor's defaults
    df = make_frame()
    assert np.array_equal(fp.fit(df).transform(df), ref.fit(df).transform(df))


def test_build_errors_name_the_column() -> None:
    from raypipe.features.stage import build

    with pytest.raises(ValueError, match="'notes'"):
        build(SimpleNamespace(features=features_section(text={"columns": ["notes"]})), SCHEMA)
    no_shape = {**SCHEMA, "columns": {}}
    with pytest.raises(ValueError, match="'img'"):
        build(SimpleNamespace(features=features_section()), no_shape)
    with pytest.raises(ValueError, match="'country'"):
        build(SimpleNamespace(features=features_section(numeric={"log": ["country"]})), SCHEMA)


@pytest.mark.parametrize("col", [
    pd.Series(["b", None, "a", "b"], dtype="str"),
    pd.Series(["b", None, "a", "b"], dtype=pd.ArrowDtype(__import__("pyarrow").large_string())),
    pd.Series(["b", None, 1, 1.0, True], dtype=object),
    np.array(["x", "y", "x"]),
])
def test_str_codes_are_as_str_factorised(col: Any) -> None:
    """The fast path (string columns factorised as they are) gives exactly ``as_str``'s texts."""
    from raypipe.columns import as_str, str_codes

    codes, texts = str_codes(col)
    expected = as_str(col).tolist()
    assert [None if k < 0 else texts[k] for k in codes] == expected
    assert len(set(texts)) == len(texts)  # each distinct text once: 1 and 1.0 stay "1" and "1.0"


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 70_000])
def test_quantile_sketch_equals_numpy_quantile(n: int) -> None:
    """The sketch reads its quantiles off one sort: the same numbers as ``np.quantile`` (linear), bit for bit."""
    from raypipe.columns import SKETCH_SAMPLE, quantile_sketch, sorted_quantiles

    x = np.random.default_rng(n).normal(size=n) * 1e6
    levels = np.linspace(0.0, 1.0, 1001)
    assert np.array_equal(sorted_quantiles(np.sort(x), levels), np.quantile(x, levels))
    sample = x[:: -(-n // SKETCH_SAMPLE)] if n > SKETCH_SAMPLE else x
    expected = np.quantile(sample, np.linspace(0.0, 1.0, 201))
    expected[0], expected[-1] = x.min(), x.max()  # exact ends even after thinning
    assert np.array_equal(quantile_sketch(x, 201), expected)
