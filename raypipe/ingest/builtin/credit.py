"""Synthetic loan applications for credit risk scoring (the built-in ``credit`` set).

One row per application. The label ``default`` (about 14 % of rows) comes from a hidden
logistic rule, then a small fraction of random label flips:

* debt-to-income ratio and revolving credit utilisation raise the risk, and raise it
  more together (an interaction: a high ratio on maxed-out cards is worse than either);
* late payments in the last 12 months raise it, three or more sharply;
* a loan large against the annual income raises it, a high income lowers it;
* fewer than two years with the current employer raise it, long employment lowers it;
* renting and the ``business`` and ``debt_consolidation`` purposes add a little.

Age and region do not enter the rule: any gap between age bands or regions in what a
model learns comes from the features correlated with them (younger applicants have
shorter employment and lower incomes), which is what a fairness slice should show.

The rows look like a real export: ``employment_years`` is text, mostly numbers (``"4.5"``)
with a few ``"n/a"``, empty cells and decimal commas (``"12,5"``); ``income`` and ``age``
have empty cells; ``application_date`` is an ISO date string. Chunk ``i`` draws all of its
randomness from ``np.random.default_rng([seed, i])`` (see :mod:`raypipe.ingest.builtin.chunks`).
``drift`` shifts the applicants (more debt, higher utilisation, younger, more renters)
while the rule stays the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from raypipe.ingest.builtin.chunks import CHUNK_ROWS, PARALLEL_THRESHOLD, chunk_rng, chunked_dataset, drift_weight, generate_frame

if TYPE_CHECKING:  # pragma: no cover
    import ray.data


SCHEMA_DOC: dict[str, str] = {
    "application_id": "int64; unique id, equal to the global row index (an id, not a feature).",
    "application_date": "str; ISO date YYYY-MM-DD in 2024-2025.",
    "age": "float64; applicant age in years, 18-80 (a few empty).",
    "age_band": "str; 18-25, 26-35, 36-50, 51-65 or 65+ (from age; 'unknown' when age is empty).",
    "region": "str; north, south, east, west or central.",
    "income": "float64; annual income in EUR, lognormal (a few empty).",
    "employment_years": "str; years with the current employer as text: '4.5', a few 'n/a', '' and decimal commas '12,5'.",
    "home_ownership": "str; rent, mortgage or own.",
    "loan_purpose": "str; car, home_improvement, debt_consolidation, education, business or medical.",
    "loan_amount": "float64; requested amount in EUR.",
    "debt_to_income": "float64; monthly debt payments / monthly income, 0-1.5.",
    "credit_utilization": "float64; revolving balance / credit limit, 0-1.5.",
    "late_payments_12m": "int64; payments 30+ days late in the last 12 months.",
    "open_accounts": "int64; open credit lines.",
    "default": "int64; label, 1 if the loan defaulted within 12 months (~14 %).",
}

REGIONS = ("north", "south", "east", "west", "central")
_REGION_P = np.array([0.22, 0.24, 0.18, 0.2, 0.16])
_REGION_INCOME = np.array([1.05, 0.92, 0.95, 1.08, 1.0])  # income scale by region
PURPOSES = ("car", "home_improvement", "debt_consolidation", "education", "business", "medical")
_PURPOSE_P = np.array([0.25, 0.18, 0.27, 0.1, 0.1, 0.1])
_PURPOSE_LOGIT = np.array([0.0, -0.2, 0.35, 0.1, 0.45, 0.2])
HOMES = ("rent", "mortgage", "own")
AGE_BANDS = ((18, 25, "18-25"), (26, 35, "26-35"), (36, 50, "36-50"), (51, 65, "51-65"), (66, 200, "65+"))

_MISSING_AGE = 0.015
_MISSING_INCOME = 0.02
_EMPLOYMENT_NA = 0.015  # "n/a"
_EMPLOYMENT_EMPTY = 0.015  # ""
_EMPLOYMENT_COMMA = 0.02  # "12,5"
_LABEL_FLIP = 0.01
_INTERCEPT = -5.0
_SHARPNESS = 2.0  # scales the rule: how far the label follows it, rather than chance
_START = np.datetime64("2024-01-01")


def age_band(age: np.ndarray) -> np.ndarray:
    """The band label of each age (``unknown`` for NaN)."""
    out = np.full(age.shape, "unknown", dtype=object)
    for lo, hi, label in AGE_BANDS:
        out[(age >= lo) & (age <= hi)] = label
    return out


def default_logit(dti: np.ndarray, util: np.ndarray, late: np.ndarray, income: np.ndarray, loan: np.ndarray,
                  employment: np.ndarray, renting: np.ndarray, purpose: np.ndarray) -> np.ndarray:
    """The hidden rule: log-odds of default from the true (clean) values."""
    return _INTERCEPT + _SHARPNESS * (
            + 1.5 * (dti - 0.35) + 1.0 * (util - 0.45)
            + 14.0 * np.clip(dti - 0.3, 0, None) * np.clip(util - 0.4, 0, None)  # both high: much worse
            + 0.45 * late + 1.0 * (late >= 3)
            + 1.2 * np.clip(loan / income - 0.3, 0, None)
            - 0.6 * (np.log(income) - np.log(40_000))
            + 0.7 * (employment < 2) - 0.04 * np.clip(employment - 2, 0, 20)
            + 0.3 * renting + _PURPOSE_LOGIT[purpose])


def _employment_text(rng: np.random.Generator, years: np.ndarray) -> pd.Series:
    """Years as the text a real export holds: numbers, ``n/a``, empty cells, decimal commas."""
    text = np.array([f"{v:.1f}" for v in years], dtype=object)
    u = rng.random(len(years))
    comma = u < _EMPLOYMENT_COMMA
    text[comma] = [t.replace(".", ",") for t in text[comma]]
    text[(u >= _EMPLOYMENT_COMMA) & (u < _EMPLOYMENT_COMMA + _EMPLOYMENT_NA)] = "n/a"
    text[(u >= _EMPLOYMENT_COMMA + _EMPLOYMENT_NA) & (u < _EMPLOYMENT_COMMA + _EMPLOYMENT_NA + _EMPLOYMENT_EMPTY)] = ""
    return pd.Series(text, dtype=object)


def generate_chunk(chunk_index: int, rows: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    """Generates one chunk of ``rows`` applications (ids from ``chunk_index * CHUNK_ROWS``).

    Args:
        chunk_index: Index of the chunk.
        rows: Number of rows, at most :data:`CHUNK_ROWS`.
        seed: Dataset seed; the chunk uses ``np.random.default_rng([seed, chunk_index])``.
        drift: Distribution shift, ``0`` for the reference distribution.

    Returns:
        A frame with the columns of :data:`SCHEMA_DOC`.
    """
    rng = chunk_rng(chunk_index, rows, seed, drift)
    w = drift_weight(drift)
    n = rows
    age = np.clip(np.round(rng.normal(42.0 - 8.0 * w, 13.0, n)), 18, 80).astype(np.float64)
    region = np.minimum(np.searchsorted(np.cumsum(_REGION_P), rng.random(n), side="right"), len(REGIONS) - 1)
    income = np.round(rng.lognormal(np.log(38_000), 0.45, n) * _REGION_INCOME[region]
                      * (0.75 + 0.5 * np.clip((age - 18) / 30, 0, 1)), -2)
    employment = np.round(np.clip(rng.gamma(1.6, 2.2, n) * np.clip((age - 17) / 20, 0.2, 1.5), 0, age - 17), 1)
    older = [0.3 + 0.2 * w, 0.45 - 0.1 * w, 0.25 - 0.1 * w]  # drift: more renters
    home = np.where(age < 30, rng.choice(3, n, p=[0.7, 0.2, 0.1]), rng.choice(3, n, p=older))
    purpose = np.minimum(np.searchsorted(np.cumsum(_PURPOSE_P), rng.random(n), side="right"), len(PURPOSES) - 1)
    loan = np.round(rng.lognormal(np.log(9_000), 0.7, n), -1)
    dti = np.round(np.clip(rng.beta(2.2, 5.0, n) * 1.1 + 0.2 * w, 0, 1.5), 3)
    util = np.round(np.clip(rng.beta(1.6, 2.4, n) * 1.2 + 0.25 * w, 0, 1.5), 3)
    late = rng.poisson(0.25 + 1.2 * util * dti + 0.3 * w, n).astype(np.int64)
    accounts = rng.poisson(4.0, n).astype(np.int64) + 1
    logit = default_logit(dti, util, late, income, loan, employment, home == 0, purpose)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    label = np.where(rng.random(n) < _LABEL_FLIP, 1 - label, label)
    age[rng.random(n) < _MISSING_AGE] = np.nan
    income_out = np.where(rng.random(n) < _MISSING_INCOME, np.nan, income)
    dates = (_START + rng.integers(0, 730, n).astype("timedelta64[D]")).astype(str)
    return pd.DataFrame({
        "application_id": np.arange(n, dtype=np.int64) + chunk_index * CHUNK_ROWS,
        "application_date": pd.Series(dates.astype(object), dtype=object),
        "age": age,
        "age_band": pd.Series(age_band(age), dtype=object),
        "region": pd.Series(np.asarray(REGIONS, dtype=object)[region], dtype=object),
        "income": income_out,
        "employment_years": _employment_text(rng, employment),
        "home_ownership": pd.Series(np.asarray(HOMES, dtype=object)[home], dtype=object),
        "loan_purpose": pd.Series(np.asarray(PURPOSES, dtype=object)[purpose], dtype=object),
        "loan_amount": loan,
        "debt_to_income": dti,
        "credit_utilization": util,
        "late_payments_12m": late,
        "open_accounts": accounts,
        "default": label,
    })


def generate_credit(rows: int, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """Generates the dataset in-process: chunks ``0 .. ceil(rows / CHUNK_ROWS) - 1``."""
    return generate_frame(generate_chunk, rows, seed, drift)


def credit_dataset(rows: int, seed: int = 0, drift: float = 0.0, *, parallel_threshold: int = PARALLEL_THRESHOLD) -> ray.data.Dataset:
    """The dataset as a ``ray.data.Dataset``; one Ray task per chunk above ``parallel_threshold`` rows."""
    return chunked_dataset(generate_chunk, rows, seed, drift, parallel_threshold)
