"""Tests for the built-in synthetic ``transactions`` dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.ingest.builtin.transactions import (
    CHUNK_ROWS,
    SCHEMA_DOC,
    generate_chunk,
    generate_transactions,
    transactions_dataset,
)

STR_COLUMNS = ["merchant_category", "country", "device"]
EXPECTED_DTYPES = {
    "transaction_id": "int64",
    "amount": "float64",
    "merchant_category": "object",
    "country": "object",
    "hour": "int64",
    "device": "object",
    "card_present": "bool",
    "customer_age": "float64",
    "account_age_days": "int64",
    "distance_from_home_km": "float64",
    "transactions_last_24h": "int64",
    "avg_amount_30d": "float64",
    "is_fraud": "int64",
}
MISSING_COLUMNS = ["customer_age", "distance_from_home_km", "device"]


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    """Two full chunks at drift 0, seed 0."""
    return generate_transactions(2 * CHUNK_ROWS, seed=0)


@pytest.fixture(scope="module")
def drifted() -> pd.DataFrame:
    """One chunk with a strong drift, another seed."""
    return generate_transactions(CHUNK_ROWS, seed=1, drift=1.0)


def _psi(ref: pd.Series, cur: pd.Series, bins: int = 10) -> float:
    """Population stability index of a numeric column on reference deciles."""
    a, b = ref.dropna().to_numpy(float), cur.dropna().to_numpy(float)
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / len(a)
    pb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1) / len(b)
    pa, pb = np.clip(pa, 1e-4, None), np.clip(pb, 1e-4, None)
    return float(((pb - pa) * np.log(pb / pa)).sum())


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Sorts by id and maps dtypes to plain numpy/object ones.

    Ray >= 2.56 converts Arrow blocks to ``pd.ArrowDtype`` columns in ``to_pandas``,
    while pandas blocks keep numpy dtypes; an Arrow round trip makes both comparable.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    out = table.to_pandas(ignore_metadata=True)
    out = out.sort_values("transaction_id").reset_index(drop=True)
    for col in STR_COLUMNS:
        s = out[col].astype(object)
        out[col] = s.where(s.notna(), None)
    return out


def test_columns_dtypes_and_schema_doc() -> None:
    df = generate_transactions(1_000, seed=0)
    assert list(df.columns) == list(EXPECTED_DTYPES)
    assert list(SCHEMA_DOC) == list(EXPECTED_DTYPES)
    assert all(isinstance(v, str) and v and "\n" not in v for v in SCHEMA_DOC.values())
    assert {c: str(t) for c, t in df.dtypes.items()} == EXPECTED_DTYPES


@pytest.mark.parametrize("rows", [0, 1, 7, CHUNK_ROWS + 3])
def test_row_count_and_ids(rows: int) -> None:
    df = generate_transactions(rows, seed=0)
    assert len(df) == rows
    assert list(df.columns) == list(EXPECTED_DTYPES)
    assert df["transaction_id"].to_numpy().tolist() == list(range(rows))
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0


def test_value_ranges(base: pd.DataFrame) -> None:
    assert base["transaction_id"].is_unique
    assert (base["amount"] > 0).all() and (base["avg_amount_30d"] > 0).all()
    assert base["hour"].between(0, 23).all()
    assert base["customer_age"].dropna().between(18, 90).all()
    assert (base["account_age_days"] >= 0).all()
    assert (base["distance_from_home_km"].dropna() >= 0).all()
    assert (base["transactions_last_24h"] >= 0).all()
    assert set(base["is_fraud"].unique()) == {0, 1}
    assert set(base["merchant_category"]) == {
        "grocery", "restaurants", "gas", "online_retail", "electronics",
        "travel", "entertainment", "health", "jewelry", "gaming",
    }
    assert set(base["device"].dropna()) == {"pos", "mobile", "desktop", "atm"}
    assert base["country"].value_counts(normalize=True).idxmax() == "US"
    assert 10 <= base["country"].nunique() <= 14
    # Daytime-heavy hours.
    assert (base["hour"].between(8, 21)).mean() > 0.75


def test_deterministic(base: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate_transactions(2 * CHUNK_ROWS, seed=0), base)
    other = generate_transactions(2 * CHUNK_ROWS, seed=1)
    assert not other["amount"].equals(base["amount"])
    assert not other["merchant_category"].equals(base["merchant_category"])


def test_fraud_rate_in_band(base: pd.DataFrame) -> None:
    rate = base["is_fraud"].mean()
    assert 0.02 <= rate <= 0.04


def test_label_follows_hidden_rule(base: pd.DataFrame) -> None:
    night = base["hour"] < 6
    cnp_online = ~base["card_present"] & base["merchant_category"].isin(
        ["online_retail", "electronics", "jewelry", "gaming"]
    )
    high_ratio = base["amount"] > 10 * base["avg_amount_30d"]
    rate = base["is_fraud"].mean()
    for risky in (night, cnp_online, high_ratio, base["account_age_days"] < 30):
        assert base.loc[risky, "is_fraud"].mean() > 2 * rate


def test_missing_values_present_but_rare(base: pd.DataFrame) -> None:
    frac = base.isna().mean()
    for col in MISSING_COLUMNS:
        assert 0.0 < frac[col] < 0.06, col
    assert (frac.drop(MISSING_COLUMNS) == 0).all()
    # Missing strings are None, not NaN or a pandas NA scalar.
    assert all(v is None for v in base.loc[base["device"].isna(), "device"])


def test_drift_zero_is_default() -> None:
    pd.testing.assert_frame_equal(
        generate_transactions(5_000, seed=3, drift=0.0), generate_transactions(5_000, seed=3)
    )


def test_drift_shifts_distributions(base: pd.DataFrame, drifted: pd.DataFrame) -> None:
    ref = base.iloc[:CHUNK_ROWS]
    assert drifted["amount"].mean() > 1.5 * ref["amount"].mean()
    assert (drifted["country"] != "US").mean() > (ref["country"] != "US").mean() + 0.1
    assert (drifted["hour"] < 6).mean() > 2 * (ref["hour"] < 6).mean()
    assert (drifted["device"] == "mobile").mean() > (ref["device"] == "mobile").mean() + 0.05
    assert (drifted["merchant_category"] == "online_retail").mean() > (
        ref["merchant_category"] == "online_retail"
    ).mean()
    assert ref["is_fraud"].mean() < drifted["is_fraud"].mean() < 3 * ref["is_fraud"].mean()


def test_drift_detectable_by_psi(base: pd.DataFrame) -> None:
    ref, same = base.iloc[:CHUNK_ROWS], base.iloc[CHUNK_ROWS:]
    half = generate_transactions(CHUNK_ROWS, seed=2, drift=0.5)
    assert _psi(ref["amount"], same["amount"]) < 0.02
    assert _psi(ref["amount"], half["amount"]) > 0.1


def test_chunk_independence(base: pd.DataFrame) -> None:
    chunk = generate_chunk(1, CHUNK_ROWS, seed=0)
    expected = base.iloc[CHUNK_ROWS : 2 * CHUNK_ROWS].reset_index(drop=True)
    pd.testing.assert_frame_equal(chunk, expected)
    assert chunk["transaction_id"].iloc[0] == CHUNK_ROWS


def test_short_last_chunk() -> None:
    df = generate_transactions(CHUNK_ROWS + 1_000, seed=5)
    short = generate_chunk(1, 1_000, seed=5)
    pd.testing.assert_frame_equal(df.iloc[CHUNK_ROWS:].reset_index(drop=True), short)
    pd.testing.assert_frame_equal(df.iloc[:CHUNK_ROWS], generate_chunk(0, CHUNK_ROWS, seed=5))


def test_generate_chunk_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_chunk(0, CHUNK_ROWS + 1, seed=0)
    with pytest.raises(ValueError):
        generate_chunk(-1, 10, seed=0)
    with pytest.raises(ValueError):
        generate_transactions(-1)
    with pytest.raises(ValueError):
        generate_transactions(10, drift=-0.5)


def test_ray_paths_match_pandas(ray_session) -> None:
    rows = 2 * CHUNK_ROWS + 20_000
    expected = _normalize(generate_transactions(rows, seed=7, drift=0.3))
    parallel = transactions_dataset(rows, seed=7, drift=0.3, parallel_threshold=0)
    assert parallel.schema().names == list(EXPECTED_DTYPES)
    got = _normalize(parallel.to_pandas())
    assert {c: str(t) for c, t in got.dtypes.items()} == EXPECTED_DTYPES
    pd.testing.assert_frame_equal(got, expected)

    small = transactions_dataset(1_000, seed=7, drift=0.3)
    pd.testing.assert_frame_equal(
        _normalize(small.to_pandas()),
        _normalize(generate_transactions(1_000, seed=7, drift=0.3)),
    )
