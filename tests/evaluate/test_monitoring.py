"""The evaluate stage's drift reference: the test split's answers and scores, and the score calibration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raypipe.evaluate.monitoring import expected_calibration_error, prediction_reference
from raypipe.evaluate.scored import Scored


def _scored(rng: np.random.Generator, n: int, overconfident: bool = False) -> Scored:
    p = 1 / (1 + np.exp(-rng.normal(-1, 1.5, n)))
    y = (rng.random(n) < p).astype(np.int64)
    shown = np.clip(np.where(p > 0.5, p + 0.3, p - 0.3), 0.001, 0.999) if overconfident else p
    return Scored("classification", y, np.c_[1 - shown, shown], pd.DataFrame(index=range(n)), ["0", "1"])


def test_binary_reference_holds_answers_score_bins_and_a_calibration_fitted_on_validation() -> None:
    rng = np.random.default_rng(0)
    test, validation = _scored(rng, 4000, overconfident=True), _scored(rng, 4000, overconfident=True)
    doc = prediction_reference(test, validation, 0.5)
    assert doc["rows"] == 4000 and doc["answer"]["kind"] == "categorical" and sum(doc["answer"]["counts"]) == 4000
    assert set(doc["answer"]["values"]) <= {"0", "1"} and sum(doc["score"]["counts"]) == 4000
    edges = doc["score"]["edges"]  # many scores clipped to 0.001 / 0.999: repeated quantiles merge
    assert edges == sorted(set(edges)) and 3 <= len(edges) <= 9
    cal = doc["calibration"]
    assert cal["kind"] == "binary" and cal["fitted_on"] == "validation"
    assert cal["ece_raw"] > 0.1 > cal["ece"]  # isotonic on validation repairs the overconfident scores on test
    calibrated = np.interp(test.scores[:, 1], cal["x"], cal["y"])
    assert expected_calibration_error(calibrated, test.y.astype(float)) == pytest.approx(cal["ece"])


def test_regression_reference_bins_the_predicted_values_and_has_no_calibration() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(10, 2, 1000)
    test = Scored("regression", values + rng.normal(0, 1, 1000), values[:, None], pd.DataFrame(index=range(1000)), None)
    doc = prediction_reference(test, None, 0.5)
    assert doc["answer"]["kind"] == "numeric" and sum(doc["answer"]["counts"]) == 1000
    assert doc["score"] is None and doc["calibration"] is None


def test_few_positives_get_platts_sigmoid_rather_than_isotonic_steps() -> None:
    rng = np.random.default_rng(2)
    p = 1 / (1 + np.exp(-rng.normal(-4, 1.5, 3000)))  # ~3 % positives: under 1,000 of them
    y = (rng.random(len(p)) < p).astype(np.int64)
    test = Scored("classification", y, np.c_[1 - p, p], pd.DataFrame(index=range(3000)), ["0", "1"])
    cal = prediction_reference(test, test, 0.5)["calibration"]
    assert cal["method"] == "sigmoid" and cal["ece"] < 0.02
    assert np.all(np.diff(cal["y"]) >= 0) and 0 < cal["y"][1] < cal["y"][-2] < 1  # smooth, monotone, no 0/1 plateaus
