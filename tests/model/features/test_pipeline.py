"""Unit tests for ``raypipe.model.features.pipeline.FeaturePipeline``."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raypipe.errors import ArtifactError
from raypipe.model.features.categorical import OTHER
from raypipe.model.features.pipeline import FeaturePipeline

NUMERIC = ["amount", "age", "hour", "card_present"]
CATEGORICAL = ["country", "device"]


def make_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.0, n)
    age = rng.normal(40, 12, n)
    age[rng.random(n) < 0.1] = np.nan
    country = rng.choice(["US", "DE", "FR", "JP", "BR"], size=n, p=[0.5, 0.2, 0.15, 0.1, 0.05]).astype(object)
    device = rng.choice(["pos", "mobile", "web"], size=n).astype(object)
    device[rng.random(n) < 0.1] = None
    return pd.DataFrame({
        "amount": amount,
        "age": age,
        "hour": rng.integers(0, 24, n),
        "card_present": rng.random(n) < 0.3,
        "country": pd.Series(country, dtype=object),
        "device": pd.Series(device, dtype=object),
    })


def fitted(df: pd.DataFrame, **kw) -> FeaturePipeline:
    return FeaturePipeline(NUMERIC, CATEGORICAL, **kw).fit(df)


def num(fp: FeaturePipeline) -> Any:
    """The fitted numeric operator."""
    return next(op for op in fp.operators if op.kind == "numeric")


def cat(fp: FeaturePipeline) -> Any:
    """The fitted categorical operator."""
    return next(op for op in fp.operators if op.kind == "categorical")


def col(fp: FeaturePipeline, name: str) -> int:
    return fp.feature_names_.index(name)


def test_output_shape_dtype_and_names() -> None:
    df = make_frame()
    fp = fitted(df, max_categories=3)
    x = fp.transform(df)
    assert x.dtype == np.float32
    # 4 numeric + country (3 + other) + device (3 + other)
    assert x.shape == (len(df), 4 + 4 + 4) == (len(df), fp.n_features)
    assert fp.feature_names_[:4] == NUMERIC
    assert fp.feature_names_[4:8] == ["country=US", "country=DE", "country=FR", f"country={OTHER}"]
    assert np.isfinite(x).all()


def test_standard_scaling() -> None:
    df = make_frame()
    fp = fitted(df)
    x = fp.transform(df)
    for c in ["amount", "hour", "card_present"]:  # columns without NaN
        v = x[:, col(fp, c)].astype(np.float64)
        assert abs(v.mean()) < 1e-4, c
        assert abs(v.std() - 1.0) < 1e-4, c
    assert num(fp).centers_["amount"] == pytest.approx(df["amount"].mean())
    assert num(fp).scales_["amount"] == pytest.approx(df["amount"].std(ddof=0))
    # NaN rows ignored by the statistics
    assert num(fp).centers_["age"] == pytest.approx(df["age"].mean())
    assert num(fp).scales_["age"] == pytest.approx(df["age"].std(ddof=0))


def test_median_imputation_uses_median() -> None:
    df = make_frame()
    fp = fitted(df, impute="median", scale="none")
    median = float(np.nanmedian(df["age"]))
    assert num(fp).impute_values_["age"] == pytest.approx(median, rel=1e-9)
    x = fp.transform(df)
    nan_rows = df["age"].isna().to_numpy()
    assert nan_rows.any()
    assert np.allclose(x[nan_rows, col(fp, "age")], median, rtol=1e-6)
    assert np.allclose(x[~nan_rows, col(fp, "age")], df["age"][~nan_rows], rtol=1e-6)


def test_mean_and_constant_imputation() -> None:
    df = make_frame()
    fp = fitted(df, impute="mean", scale="none")
    assert num(fp).impute_values_["age"] == pytest.approx(df["age"].mean())
    fp = fitted(df, impute="constant", fill_value=-7.0, scale="none")
    x = fp.transform(df)
    assert np.all(x[df["age"].isna().to_numpy(), col(fp, "age")] == -7.0)


def test_imputed_value_is_scaled_too() -> None:
    df = make_frame()
    fp = fitted(df, impute="median", scale="standard")
    x = fp.transform(df)
    expected = (np.nanmedian(df["age"]) - df["age"].mean()) / df["age"].std(ddof=0)
    assert np.allclose(x[df["age"].isna().to_numpy(), col(fp, "age")], expected, atol=1e-5)


def test_minmax() -> None:
    df = make_frame()
    fp = fitted(df, scale="minmax")
    x = fp.transform(df)
    for c in ["amount", "hour", "card_present"]:
        v = x[:, col(fp, c)]
        assert v.min() == pytest.approx(0.0, abs=1e-6) and v.max() == pytest.approx(1.0, abs=1e-6), c
    out = fp.transform(pd.DataFrame({**{c: [df[c].max() * 2] for c in NUMERIC}, "country": ["US"], "device": ["pos"]}))
    assert out[0, col(fp, "amount")] > 1.0  # beyond the training range is not clipped


def test_constant_column_scale_is_one() -> None:
    df = pd.DataFrame({"k": [5.0] * 10, "c": ["a"] * 10})
    fp = FeaturePipeline(["k"], ["c"]).fit(df)
    assert num(fp).scales_["k"] == 1.0
    assert np.all(fp.transform(df)[:, 0] == 0.0)


def test_bools_are_zero_one() -> None:
    df = make_frame()
    fp = fitted(df, scale="none")
    x = fp.transform(df)
    assert set(np.unique(x[:, col(fp, "card_present")]).tolist()) == {0.0, 1.0}
    assert np.array_equal(x[:, col(fp, "card_present")], df["card_present"].to_numpy(dtype=np.float32))


def test_onehot_max_categories_other_and_missing() -> None:
    df = make_frame()
    fp = fitted(df, max_categories=2)
    counts = df["country"].value_counts()
    assert cat(fp).categories_["country"] == list(counts.index[:2]) == ["US", "DE"]
    test = pd.DataFrame({
        **{c: [1.0] * 5 for c in NUMERIC},
        "country": pd.Series(["US", "DE", "JP", "Atlantis", None], dtype=object),
        "device": pd.Series(["pos"] * 5, dtype=object),
    })
    x = fp.transform(test)
    block = x[:, col(fp, "country=US"): col(fp, f"country={OTHER}") + 1]
    assert block.tolist() == [
        [1, 0, 0],  # frequent
        [0, 1, 0],  # frequent
        [0, 0, 1],  # rare in training -> other
        [0, 0, 1],  # unseen -> other
        [0, 0, 0],  # missing -> all zeros
    ]


def test_onehot_ties_broken_by_name() -> None:
    df = pd.DataFrame({"c": ["b", "a", "c", "b", "a", "c", "d"]})
    fp = FeaturePipeline([], ["c"], max_categories=2).fit(df)
    assert cat(fp).categories_["c"] == ["a", "b"]


def test_missing_categorical_in_training_is_not_a_category() -> None:
    df = make_frame()
    fp = fitted(df)
    assert "None" not in cat(fp).categories_["device"] and "nan" not in cat(fp).categories_["device"]
    x = fp.transform(df)
    dev = [i for i, n in enumerate(fp.feature_names_) if n.startswith("device=")]
    missing = df["device"].isna().to_numpy()
    assert np.all(x[missing][:, dev] == 0)
    assert np.all(x[~missing][:, dev].sum(axis=1) == 1)


def test_json_round_trip_identical() -> None:
    df = make_frame()
    fp = fitted(df, max_categories=3, scale="minmax")
    d = json.loads(json.dumps(fp.to_dict()))
    fp2 = FeaturePipeline.from_dict(d)
    assert fp2.feature_names_ == fp.feature_names_
    assert np.array_equal(fp.transform(df), fp2.transform(df))


def test_from_dict_rejects_other_format() -> None:
    with pytest.raises(ArtifactError):
        FeaturePipeline.from_dict({"format": "something/9"})


def test_transform_before_fit_raises() -> None:
    fp = FeaturePipeline(NUMERIC, CATEGORICAL)
    with pytest.raises(RuntimeError, match="must be fitted"):
        fp.transform(make_frame(5))
    with pytest.raises(RuntimeError, match="must be fitted"):
        fp.to_dict()


def test_fit_fails_clearly_on_all_missing_numeric() -> None:
    df = pd.DataFrame({"x": [np.nan, np.nan], "c": ["a", "b"]})
    with pytest.raises(ValueError, match="'x'"):
        FeaturePipeline(["x"], ["c"]).fit(df)


# --- train/serve parity ----------------------------------------------------------------
def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as a JSON request would carry them: NaN -> None, numpy scalars -> Python."""
    return json.loads(df.to_json(orient="records"))


def test_single_row_dict_equals_batch_row() -> None:
    df = make_frame()
    fp = fitted(df, max_categories=3)
    batch = fp.transform(df)
    for i in range(30):
        rec = _records(df.iloc[[i]])[0]
        one = fp.transform({k: [v] for k, v in rec.items()})
        assert one.shape == (1, fp.n_features)
        assert np.allclose(one[0], batch[i], atol=1e-6), (i, rec)


def test_request_frame_with_none_equals_batch_rows() -> None:
    df = make_frame()
    fp = fitted(df, max_categories=3)
    batch = fp.transform(df)
    # rows with a missing numeric and a missing categorical
    idx = df.index[df["age"].isna() | df["device"].isna()][:10].tolist()
    assert len(idx) >= 5
    for i in idx:
        req = pd.DataFrame(_records(df.iloc[[i]]))
        assert np.allclose(fp.transform(req)[0], batch[i], atol=1e-6), i
    req = pd.DataFrame(_records(df.loc[idx]))
    assert np.allclose(fp.transform(req), batch[idx], atol=1e-6)


def test_request_with_all_none_row() -> None:
    df = make_frame()
    fp = fitted(df)
    row = fp.transform(pd.DataFrame([{c: None for c in NUMERIC + CATEGORICAL}]))
    expected = [(num(fp).impute_values_[c] - num(fp).centers_[c]) / num(fp).scales_[c] for c in NUMERIC]
    assert np.allclose(row[0, :4], expected, atol=1e-6)
    assert np.all(row[0, 4:] == 0)


def test_string_dtype_categoricals_match_object() -> None:
    """pandas 3 reads strings as the ``str`` dtype (NaN for missing): same features."""
    df = make_frame()
    fp = fitted(df)
    df_str = df.copy()
    df_str["country"] = df["country"].astype(pd.StringDtype(na_value=np.nan))
    df_str["device"] = df["device"].astype(pd.StringDtype(na_value=np.nan))
    assert np.array_equal(fp.transform(df_str), fp.transform(df))
    fp2 = fitted(df_str)
    assert cat(fp2).categories_ == cat(fp).categories_


def test_inf_is_imputed_and_ignored_in_stats() -> None:
    df = make_frame()
    base = fitted(df)
    df2 = df.copy()
    df2.loc[0, "amount"] = np.inf
    df2.loc[1, "amount"] = -np.inf
    fp = fitted(df2)
    assert np.isfinite(num(fp).centers_["amount"]) and np.isfinite(num(fp).scales_["amount"])
    x = fp.transform(df2)
    assert np.isfinite(x).all()
    assert x[0, 0] == pytest.approx((num(fp).impute_values_["amount"] - num(fp).centers_["amount"]) / num(fp).scales_["amount"])
    assert num(base).centers_["amount"] != num(fp).centers_["amount"]


# --- fitting from per-block statistics -------------------------------------------------------
def test_fit_from_chunk_stats_matches_whole_frame() -> None:
    df = make_frame(2000, seed=3)
    whole = fitted(df)
    fp = FeaturePipeline(NUMERIC, CATEGORICAL)
    chunks = np.array_split(np.arange(len(df)), 4)
    parts = [json.loads(json.dumps(fp.partial_stats(df.iloc[ix]))) for ix in chunks]
    fp.fit_from_stats(parts)
    for c in NUMERIC:
        assert num(fp).centers_[c] == pytest.approx(num(whole).centers_[c], rel=1e-9), c
        assert num(fp).scales_[c] == pytest.approx(num(whole).scales_[c], rel=1e-9), c
    for c in ["amount", "age"]:
        spread = float(np.nanpercentile(df[c], 75) - np.nanpercentile(df[c], 25))
        assert abs(num(fp).impute_values_[c] - num(whole).impute_values_[c]) < 0.02 * spread, c
    assert cat(fp).categories_ == cat(whole).categories_
    assert fp.feature_names_ == whole.feature_names_


def test_fit_from_stats_with_empty_block() -> None:
    df = make_frame(200)
    fp = FeaturePipeline(NUMERIC, CATEGORICAL)
    parts = [fp.partial_stats(df.iloc[:0]), fp.partial_stats(df)]
    fp.fit_from_stats(parts)
    whole = fitted(df)
    assert num(fp).centers_ == pytest.approx(num(whole).centers_)
    assert num(fp).impute_values_ == pytest.approx(num(whole).impute_values_)


def test_fit_on_ray_dataset_matches_pandas(ray_session) -> None:
    import ray

    df = make_frame(2000, seed=5)
    whole = fitted(df, max_categories=3)
    # ``from_pandas(df, override_num_blocks=4)`` fails in Ray 2.60 under pandas 3
    # (np.array_split on a DataFrame gives ndarrays): pass 4 frames instead.
    ds = ray.data.from_pandas([df.iloc[i: i + 500] for i in range(0, 2000, 500)])
    assert ds.num_blocks() == 4
    fp = FeaturePipeline(NUMERIC, CATEGORICAL, max_categories=3).fit(ds)
    for c in NUMERIC:
        assert num(fp).centers_[c] == pytest.approx(num(whole).centers_[c], rel=1e-9), c
        assert num(fp).scales_[c] == pytest.approx(num(whole).scales_[c], rel=1e-9), c
        spread = float(np.nanpercentile(df[c].astype(float), 75) - np.nanpercentile(df[c].astype(float), 25)) or 1.0
        assert abs(num(fp).impute_values_[c] - num(whole).impute_values_[c]) <= 0.02 * spread, c
    assert cat(fp).categories_ == cat(whole).categories_
    assert fp.feature_names_ == whole.feature_names_


@pytest.mark.parametrize("encode", ["onehot", "ordinal", "hashing"])
def test_records_fast_path_equals_the_dataframe_path(encode) -> None:
    """Lists of records (Serve's batches) skip the DataFrame; the features are identical bit for bit,
    whatever the values: None, NaN, inf, bools, ints, unseen or empty strings, junk types, absent keys."""
    from raypipe.model.features import pipeline

    fp = fitted(make_frame(), encode=encode, clip=[0.01, 0.99], log=["amount"], max_categories=3)
    rng = np.random.default_rng(5)
    numbers = [None, float("nan"), float("inf"), -1e308, 0, 7, 3.5, True, False, 2**60, -0.0]
    texts = [None, float("nan"), "", "US", "DE", "JP", "BR", "atlantis", "pos", "web"]
    odd = [b"US", 3, 2.5, ["US"], {"a": 1}, "12"]  # the general path's coercions decide these
    for trial in range(300):
        n = int(rng.integers(1, 9))
        rows = [{"amount": numbers[rng.integers(len(numbers))], "age": numbers[rng.integers(len(numbers))],
                 "hour": int(rng.integers(0, 24)), "card_present": bool(rng.random() < 0.5),
                 "country": texts[rng.integers(len(texts))], "device": texts[rng.integers(len(texts))]}
                for _ in range(n)]
        if trial % 10 == 0:
            rows[0]["country" if trial % 20 else "amount"] = odd[trial // 10 % len(odd)]
        if trial % 25 == 0:
            del rows[-1]["device"]
        try:
            general = fp.transform(pd.DataFrame.from_records(rows))
        except (KeyError, ValueError, TypeError) as e:  # e.g. a column absent from every row
            with pytest.raises(type(e)):
                fp.transform(rows)
            continue
        np.testing.assert_array_equal(fp.transform(rows), general, err_msg=str(rows))
    plain = [{"amount": 1.0, "age": 30, "hour": 3, "card_present": True, "country": "US", "device": "web"}]
    assert fp._records_transform(plain) is not None or encode == "hashing"  # the fast path really ran
    assert fp._records_transform([{**plain[0], "country": 3}]) is None  # ... and stepped aside for a number
    assert pipeline.RECORDS_FAST_MAX >= 64  # covers a whole default Serve batch
