"""The synthetic ``credit`` set: its columns, messy cells, hidden rule, seeding and drift."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raypipe.ingest.builtin import BUILTIN_GENERATOR_VERSION, BUILTIN_ID_COLUMNS, BUILTIN_TARGETS
from raypipe.ingest.builtin.credit import SCHEMA_DOC, age_band, generate_chunk, generate_credit


@pytest.fixture(scope="module")
def credit() -> pd.DataFrame:
    return generate_credit(20_000, seed=0)


def test_columns_registration_and_label_rate(credit: pd.DataFrame) -> None:
    assert list(credit.columns) == list(SCHEMA_DOC)
    assert BUILTIN_TARGETS["credit"] == "default" and BUILTIN_ID_COLUMNS["credit"] == ["application_id"]
    assert BUILTIN_GENERATOR_VERSION["credit"] >= 1
    assert credit["application_id"].is_unique
    assert 0.08 < credit["default"].mean() < 0.22


def test_cells_are_messy_the_way_exports_are(credit: pd.DataFrame) -> None:
    emp = credit["employment_years"]
    assert emp.map(type).eq(str).all()
    assert (emp == "n/a").mean() > 0.005 and (emp == "").mean() > 0.005
    assert emp.str.fullmatch(r"\d+,\d").mean() > 0.005  # decimal commas
    assert emp.str.fullmatch(r"\d+\.\d").mean() > 0.9
    assert 0.005 < credit["income"].isna().mean() < 0.05 and credit["age"].isna().any()
    dates = pd.to_datetime(credit["application_date"], format="%Y-%m-%d")
    assert dates.min() >= pd.Timestamp("2024-01-01") and dates.max() < pd.Timestamp("2026-01-01")


def test_age_band_follows_age(credit: pd.DataFrame) -> None:
    assert (credit.loc[credit["age"].isna(), "age_band"] == "unknown").all()
    known = credit.dropna(subset=["age"])
    for band, (lo, hi) in {"18-25": (18, 25), "26-35": (26, 35), "65+": (66, 80)}.items():
        ages = known.loc[known["age_band"] == band, "age"]
        assert len(ages) and ages.between(lo, hi).all()
    assert list(age_band(np.array([25.0, 26.0, 65.0, 66.0, np.nan]))) == ["18-25", "26-35", "51-65", "65+", "unknown"]


def test_hidden_rule_shows_in_the_rows(credit: pd.DataFrame) -> None:
    high = (credit["debt_to_income"] > 0.5) & (credit["credit_utilization"] > 0.7)
    low = (credit["debt_to_income"] < 0.25) & (credit["credit_utilization"] < 0.3)
    assert credit.loc[high, "default"].mean() > 2 * credit.loc[low, "default"].mean()
    late = credit.groupby(credit["late_payments_12m"].clip(upper=3))["default"].mean()
    assert late.is_monotonic_increasing
    # age is not in the rule: the rate by band moves only through correlated features, within a range
    by_band = credit[credit["age_band"] != "unknown"].groupby("age_band")["default"].mean()
    assert by_band.max() < 3 * by_band.min()


def test_seeded_chunks_and_drift() -> None:
    a, b = generate_credit(500, seed=4), generate_credit(500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not generate_credit(500, seed=5)["debt_to_income"].equals(a["debt_to_income"])
    chunk = generate_chunk(2, 100, seed=4)
    assert chunk["application_id"].iloc[0] == 2 * 50_000
    drifted = generate_credit(5000, seed=4, drift=2.0)
    assert drifted["debt_to_income"].mean() > generate_credit(5000, seed=4)["debt_to_income"].mean() + 0.05
    with pytest.raises(ValueError, match="rows must be >= 0"):
        generate_credit(-1)
