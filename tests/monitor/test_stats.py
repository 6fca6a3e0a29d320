"""The drift statistics on binned counts, against scipy on raw values where they must agree."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from raypipe.columns import bin_of, quantile_bins
from raypipe.monitor.stats import EPS, jensen_shannon, psi, wasserstein_binned


def test_psi_is_zero_for_equal_shares_and_matches_the_formula() -> None:
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.3, 0.4])
    assert psi(p * 1000, q * 50) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_of_an_empty_bin_is_finite_and_large() -> None:
    value = psi([50, 50, 0], [40, 40, 20])
    q, p = 0.2, EPS
    assert np.isfinite(value) and value >= (q - p) * np.log(q / p)


def test_jensen_shannon_is_scipys_base_2_distance() -> None:
    a, b = [5, 3, 2, 0], [1, 1, 1, 7]
    assert jensen_shannon(a, b) == pytest.approx(jensenshannon(np.array(a) / 10, np.array(b) / 10, base=2))
    assert jensen_shannon(a, a) == pytest.approx(0.0, abs=1e-7) and 0 < jensen_shannon(a, b) <= 1


def test_binned_wasserstein_equals_scipy_on_raw_values_when_every_bin_holds_one_value() -> None:
    rng = np.random.default_rng(0)
    ref, win = rng.integers(0, 6, 5000).astype(float), rng.integers(1, 7, 3000).astype(float)
    bins = quantile_bins(np.sort(ref), np.ones(len(ref)), len(ref), bins=10)
    k = len(bins["edges"]) + 1
    idx = bin_of(bins["edges"], win)
    counts, sums = np.bincount(idx, minlength=k), np.bincount(idx, weights=win, minlength=k)
    means = [s / c if c else None for s, c in zip(sums, counts)]
    got = wasserstein_binned(bins["means"], bins["counts"], means, counts, scale=float(ref.std()))
    assert got == pytest.approx(wasserstein_distance(ref, win) / ref.std(), rel=1e-9)


def test_binned_wasserstein_measures_a_shift_in_standard_deviations() -> None:
    rng = np.random.default_rng(1)
    ref, win = rng.normal(0, 2, 50_000), rng.normal(1, 2, 50_000)  # half a std
    bins = quantile_bins(np.sort(ref), np.ones(len(ref)), len(ref))
    idx = bin_of(bins["edges"], win)
    counts, sums = np.bincount(idx, minlength=10), np.bincount(idx, weights=win, minlength=10)
    got = wasserstein_binned(bins["means"], bins["counts"], list(sums / counts), counts, scale=float(ref.std()))
    assert got == pytest.approx(0.5, abs=0.05)


def test_quantile_bins_are_fixed_deduplicated_and_count_every_value() -> None:
    rng = np.random.default_rng(2)
    x = np.sort(rng.normal(size=10_000))
    bins = quantile_bins(x, np.ones(len(x)), len(x))
    assert len(bins["edges"]) == 9 and sum(bins["counts"]) == len(x)
    assert all(abs(c - 1000) <= 2 for c in bins["counts"])  # equal-probability bins
    few = np.sort(rng.integers(0, 3, 1000).astype(float))  # three values: the quantiles repeat, the bins do not
    fb = quantile_bins(few, np.ones(len(few)), len(few))
    assert fb["edges"] == sorted(set(fb["edges"])) and sum(fb["counts"]) == 1000
    assert np.bincount(bin_of(fb["edges"], few), minlength=len(fb["edges"]) + 1).tolist() == fb["counts"]
