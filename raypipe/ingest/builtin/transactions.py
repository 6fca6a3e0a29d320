"""Synthetic card transactions for fraud detection (the built-in ``transactions`` dataset).

Rows are generated in fixed-size chunks of :data:`CHUNK_ROWS`. Chunk ``i`` draws all of
its randomness from ``np.random.default_rng([seed, i])``, so any chunk can be generated on
its own, on any worker, and the result never depends on the execution path (pandas on
the driver or Ray Data tasks in parallel).

The label ``is_fraud`` comes from a hidden logistic rule over several features (amount
far above the customer's 30-day average, night hours, high-risk foreign countries, card
not present on risky merchant categories, new accounts, high velocity, distance from
home), followed by a small fraction of random label flips. The ``drift`` knob shifts the
feature distributions (larger amounts, more night hours, more foreign and online/mobile
traffic) and slightly raises the fraud rate, so that drift monitors have something to
detect.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raypipe.ingest.builtin.chunks import CHUNK_ROWS, PARALLEL_THRESHOLD, chunk_rng, chunked_dataset, drift_weight, generate_frame

if TYPE_CHECKING:  # pragma: no cover
    import ray.data


SCHEMA_DOC: dict[str, str] = {
    "transaction_id": "int64; unique id, equal to the global row index.",
    "amount": "float64; transaction amount in USD, lognormal, scale depends on merchant_category.",
    "merchant_category": "str; one of grocery, restaurants, gas, online_retail, electronics, "
    "travel, entertainment, health, jewelry, gaming.",
    "country": "str; ISO 3166 alpha-2 country of the merchant, home country 'US' dominant.",
    "hour": "int64; local hour of day 0-23, daytime-heavy.",
    "device": "str or None; pos, mobile, desktop or atm (a few values missing).",
    "card_present": "bool; whether the physical card was present.",
    "customer_age": "float64; customer age in years, 18-90 (a few NaN).",
    "account_age_days": "int64; days since the account was opened.",
    "distance_from_home_km": "float64; distance between merchant and home address (a few NaN).",
    "transactions_last_24h": "int64; number of transactions by the same card in the last 24 h.",
    "avg_amount_30d": "float64; the customer's average transaction amount over 30 days.",
    "is_fraud": "int64; label, 1 if the transaction is fraudulent (imbalanced, ~3 %).",
}

# --- Distributions -------------------------------------------------------------------

CATEGORIES = (
    "grocery", "restaurants", "gas", "online_retail", "electronics",
    "travel", "entertainment", "health", "jewelry", "gaming",
)
_CAT_P = np.array([0.22, 0.17, 0.11, 0.16, 0.06, 0.05, 0.08, 0.08, 0.02, 0.05])
_CAT_P_DRIFT = np.array([0.12, 0.10, 0.06, 0.30, 0.12, 0.06, 0.06, 0.04, 0.04, 0.10])
_CAT_MEDIAN = np.array([45.0, 35.0, 40.0, 60.0, 250.0, 400.0, 50.0, 80.0, 500.0, 30.0])
_CAT_SIGMA = np.array([0.6, 0.6, 0.4, 0.9, 0.9, 0.9, 0.7, 0.8, 1.0, 0.9])
_RISKY_CNP = np.isin(CATEGORIES, ("online_retail", "electronics", "jewelry", "gaming"))

COUNTRIES = ("US", "CA", "MX", "GB", "DE", "FR", "IN", "BR", "CN", "NG", "RU", "RO")
_COUNTRY_P = np.array(
    [0.82, 0.045, 0.03, 0.025, 0.018, 0.015, 0.012, 0.01, 0.01, 0.005, 0.005, 0.005]
)
_COUNTRY_P_DRIFT = np.array(
    [0.46, 0.09, 0.09, 0.07, 0.05, 0.05, 0.05, 0.03, 0.05, 0.02, 0.02, 0.02]
)
_HIGH_RISK = np.isin(COUNTRIES, ("BR", "NG", "RU", "RO"))
_NEIGHBOUR = np.isin(COUNTRIES, ("CA", "MX"))

_HOUR_W = np.array([
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4.0, 5.0, 5.5, 6.0,
    7.0, 6.5, 6.0, 6.0, 6.5, 7.0, 7.5, 7.0, 6.0, 4.5, 3.0, 1.8,
])
_HOUR_W_DRIFT = np.array([
    5.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0,
    3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.5, 4.0, 4.5, 5.0,
])

DEVICES = ("pos", "mobile", "desktop", "atm")
# Rows: device mix for in-store, mixed and online-first merchant categories.
_DEVICE_P = np.array([
    [0.80, 0.12, 0.04, 0.04],  # in-store
    [0.45, 0.25, 0.28, 0.02],  # mixed
    [0.05, 0.55, 0.40, 0.00],  # online-first
])
_DEVICE_P_DRIFT = np.array([0.10, 0.65, 0.25, 0.00])
_CAT_DEVICE_GROUP = np.array([0, 0, 0, 2, 1, 1, 0, 0, 1, 2])
_CARD_PRESENT_P = np.array([0.98, 0.15, 0.0, 0.99])  # by device

_MISSING_AGE = 0.03
_MISSING_DISTANCE = 0.025
_MISSING_DEVICE = 0.03
_LABEL_FLIP = 0.004
_LOGIT_INTERCEPT = -12.5
_DRIFT_LOGIT_SHIFT = -2.0  # partly offsets the riskier feature mix: fraud rises only mildly
_RING_LOGIT = 12.0  # concept drift: the new fraud ring's pattern (see _fraud_logit)


# --- Helpers -------------------------------------------------------------------------


def _mix(base: np.ndarray, target: np.ndarray, drift: float) -> np.ndarray:
    """Mixes two probability vectors (or rows of matrices) by the drift weight."""
    w = drift_weight(drift)
    p = (1.0 - w) * base + w * target
    return p / p.sum(axis=-1, keepdims=True)


def _sample(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling of category indices.

    Args:
        u: Uniform draws in [0, 1), one per row.
        p: Probabilities, shape ``(k,)`` shared by all rows or ``(n, k)`` per row.

    Returns:
        Integer indices in ``[0, k)``.
    """
    cdf = np.cumsum(p, axis=-1)
    if cdf.ndim == 1:
        idx = np.searchsorted(cdf, u, side="right")
    else:
        idx = (u[:, None] >= cdf).sum(axis=1)
    return np.minimum(idx, p.shape[-1] - 1)


def _str_column(
    values: tuple[str, ...], idx: np.ndarray, missing: np.ndarray | None = None
) -> pd.Series:
    """Object-dtype string column (``None`` for missing), safe for Arrow round trips."""
    arr = np.asarray(values, dtype=object)[idx]
    if missing is not None:
        arr[missing] = None
    return pd.Series(arr, dtype=object)


# --- Feature groups ------------------------------------------------------------------


def _customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Customer-level attributes: age, account age, spend scale, velocity."""
    age = np.clip(np.round(rng.normal(44.0, 15.0, n)), 18, 90).astype(np.float64)
    new = rng.random(n) < 0.05
    tenure = np.where(new, rng.uniform(0, 60, n), rng.gamma(1.3, 1000.0, n))
    account_age = np.minimum(tenure, 12_000).astype(np.int64)
    spend_scale = rng.lognormal(0.0, 0.6, n)
    velocity = rng.poisson(rng.gamma(2.0, 1.5, n)).astype(np.int64)
    return {"age": age, "account_age": account_age, "spend": spend_scale, "velocity": velocity}


def _context(rng: np.random.Generator, n: int, drift: float) -> dict[str, np.ndarray]:
    """Where and when: merchant category, country, hour, device, card presence."""
    cat = _sample(rng.random(n), _mix(_CAT_P, _CAT_P_DRIFT, drift))
    country = _sample(rng.random(n), _mix(_COUNTRY_P, _COUNTRY_P_DRIFT, drift))
    hour_p = _mix(_HOUR_W / _HOUR_W.sum(), _HOUR_W_DRIFT / _HOUR_W_DRIFT.sum(), drift)
    hour = _sample(rng.random(n), hour_p).astype(np.int64)
    device_p = _mix(_DEVICE_P, _DEVICE_P_DRIFT[None, :], 0.6 * drift)
    device = _sample(rng.random(n), device_p[_CAT_DEVICE_GROUP[cat]])
    card_present = rng.random(n) < _CARD_PRESENT_P[device]
    return {
        "cat": cat, "country": country, "hour": hour, "device": device,
        "card_present": card_present,
    }


def _money(
    rng: np.random.Generator, cat: np.ndarray, spend: np.ndarray, drift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Transaction amount and the customer's 30-day average amount."""
    scale = math.exp(0.8 * drift)
    z = rng.standard_normal(cat.shape[0])
    amount = _CAT_MEDIAN[cat] * np.exp(_CAT_SIGMA[cat] * z) * spend**0.8 * scale
    avg = 55.0 * spend * rng.lognormal(0.0, 0.15, cat.shape[0]) * scale
    return np.round(np.maximum(amount, 0.5), 2), np.round(avg, 2)


def _distance(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    """Distance between merchant and home in km, driven by the merchant country."""
    z = rng.standard_normal(country.shape[0])
    home = np.exp(np.log(8.0) + 1.4 * z)
    near = np.exp(np.log(800.0) + 0.7 * z)
    far = np.exp(np.log(6000.0) + 0.4 * z)
    km = np.where(country == 0, home, np.where(_NEIGHBOUR[country], near, far))
    return np.round(km, 1)


def _fraud_logit(f: dict[str, np.ndarray], drift: float, concept: float = 0.0) -> np.ndarray:
    """The hidden rule: log-odds of fraud from the (true, pre-missingness) features.

    ``concept`` in [0, 1] moves the rule itself (concept drift, unlike ``drift``, which moves
    the inputs): a new fraud ring tests stolen cards with many small card-not-present mobile
    payments at gaming and online shops, while large amounts and night hours matter less.
    """
    ratio = np.log(f["amount"] / f["avg"])
    night = f["hour"] < 6
    foreign = f["country"] != 0
    cnp_risky = ~f["card_present"] & _RISKY_CNP[f["cat"]]
    far = np.clip(np.log10(f["distance"] + 1.0) - 2.0, 0.0, 2.0)
    c = float(np.clip(concept, 0.0, 1.0))
    ring = (~f["card_present"] & (f["device"] == 1) & np.isin(f["cat"], (3, 9)) & (ratio < 0.0)
            & (f["velocity"] >= 3))
    return (
        _LOGIT_INTERCEPT
        + _DRIFT_LOGIT_SHIFT * drift_weight(drift)
        + _RING_LOGIT * c * ring
        + (1.0 - 0.7 * c) * 3.75 * np.clip(ratio - 1.0, 0.0, 3.0)
        + (1.0 - 0.7 * c) * 3.5 * night
        + 5.0 * _HIGH_RISK[f["country"]]
        + 1.5 * (foreign & ~_HIGH_RISK[f["country"]])
        + 4.25 * cnp_risky
        + 4.0 * (f["account_age"] < 30)
        + 1.25 * (f["account_age"] < 180)
        + 1.0 * np.clip(f["velocity"] - 4, 0, 8)
        + 1.25 * far
        + 1.5 * (f["age"] > 75)
        + 2.0 * (night & (f["device"] == 3))
    )


def _labels_from_logit(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    """Bernoulli draw from the logistic of ``logit`` plus a few random label flips."""
    p = 1.0 / (1.0 + np.exp(-logit))
    y = rng.random(logit.shape[0]) < p
    flip = rng.random(logit.shape[0]) < _LABEL_FLIP
    return (y ^ flip).astype(np.int64)


# --- Public API ----------------------------------------------------------------------


def generate_chunk(chunk_index: int, rows: int, seed: int, drift: float = 0.0, *, concept: float = 0.0) -> pd.DataFrame:
    """Generates one chunk of transactions.

    Args:
        chunk_index: Index of the chunk; its ``transaction_id`` values start at
            ``chunk_index * CHUNK_ROWS``.
        rows: Number of rows, at most :data:`CHUNK_ROWS` (only the last chunk of a
            dataset is shorter).
        seed: Dataset seed; the chunk uses ``np.random.default_rng([seed, chunk_index])``.
        drift: Distribution shift, ``0`` for the reference distribution.
        concept: Concept drift in [0, 1]: how far the fraud rule has moved (see ``_fraud_logit``).

    Returns:
        A DataFrame with the columns of :data:`SCHEMA_DOC` and a fresh ``RangeIndex``.
    """
    rng = chunk_rng(chunk_index, rows, seed, drift)
    n = rows
    f: dict[str, Any] = _customers(rng, n)
    f.update(_context(rng, n, drift))
    f["amount"], f["avg"] = _money(rng, f["cat"], f["spend"], drift)
    f["distance"] = _distance(rng, f["country"])
    is_fraud = _labels_from_logit(rng, _fraud_logit(f, drift, concept))

    age = np.where(rng.random(n) < _MISSING_AGE, np.nan, f["age"])
    distance = np.where(rng.random(n) < _MISSING_DISTANCE, np.nan, f["distance"])
    device_missing = rng.random(n) < _MISSING_DEVICE
    start = chunk_index * CHUNK_ROWS
    return pd.DataFrame({
        "transaction_id": np.arange(start, start + n, dtype=np.int64),
        "amount": f["amount"],
        "merchant_category": _str_column(CATEGORIES, f["cat"]),
        "country": _str_column(COUNTRIES, f["country"]),
        "hour": f["hour"],
        "device": _str_column(DEVICES, f["device"], device_missing),
        "card_present": f["card_present"],
        "customer_age": age,
        "account_age_days": f["account_age"],
        "distance_from_home_km": distance,
        "transactions_last_24h": f["velocity"],
        "avg_amount_30d": f["avg"],
        "is_fraud": is_fraud,
    })


def generate_transactions(rows: int, seed: int = 0, drift: float = 0.0, *, concept: float = 0.0) -> pd.DataFrame:
    """Generates the dataset in-process with pandas.

    Args:
        rows: Total number of rows.
        seed: Dataset seed.
        drift: Distribution shift, ``0`` for the reference distribution.

    Returns:
        The concatenation of chunks ``0 .. ceil(rows / CHUNK_ROWS) - 1``.
    """
    if concept:
        from functools import partial

        return generate_frame(partial(generate_chunk, concept=concept), rows, seed, drift)
    return generate_frame(generate_chunk, rows, seed, drift)


def transactions_dataset(
    rows: int,
    seed: int = 0,
    drift: float = 0.0,
    *,
    parallel_threshold: int = PARALLEL_THRESHOLD,
) -> "ray.data.Dataset":
    """Builds the dataset as a Ray Dataset.

    Small datasets are generated on the driver; above ``parallel_threshold`` rows every
    chunk is generated by its own Ray Data task. Both give identical rows.

    Args:
        rows: Total number of rows.
        seed: Dataset seed.
        drift: Distribution shift, ``0`` for the reference distribution.
        parallel_threshold: Row count above which generation runs in Ray tasks.

    Returns:
        A ``ray.data.Dataset`` with the columns of :data:`SCHEMA_DOC`.
    """
    return chunked_dataset(generate_chunk, rows, seed, drift, parallel_threshold)
