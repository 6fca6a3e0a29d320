"""Drift decisions on the built-in transactions data: false alarms, power, which columns move.

The windows are counted by the monitor's own block function (no Ray: the per-block merge is
tested through Ray Data in test_monitor_e2e.py) against a reference profiled by the validate
stage's code from 20,000 training rows. Figures (this machine): see benchmarks/RESULTS.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.monitor.domain import domain_classifier
from raypipe.monitor.drift import decide_column
from raypipe.monitor.window import block_counts
from raypipe.spec import DriftSection
from tests.monitor.helpers import SHIFTED, UNSHIFTED, column_verdicts, reference_plan

WINDOWS = 20


@pytest.fixture(scope="module")
def train():
    return generate_transactions(20_000, seed=1)


@pytest.fixture(scope="module")
def plan(train):
    return reference_plan(train)


def _alarmed(verdicts: dict) -> bool:
    return any(v["drifted"] for v in verdicts.values())


@pytest.mark.parametrize("rows", [1_000, 10_000])
def test_windows_from_the_training_distribution_raise_at_most_one_alarm_in_20(plan, rows) -> None:
    alarms = sum(_alarmed(column_verdicts(plan, generate_transactions(rows, seed=100 + i), blocks=3))
                 for i in range(WINDOWS))
    assert alarms <= 1


def test_million_row_windows_on_the_binned_counts_path_raise_at_most_one_alarm_in_20(plan) -> None:
    """Counts of a 1M-row window are drawn from the training distribution's bin shares directly
    (multinomial), which is what counting 1M generated rows would give, at a fraction of the cost."""
    truth = block_counts(generate_transactions(400_000, seed=999), plan)[0]
    rng = np.random.default_rng(5)
    cfg = DriftSection()
    alarms = 0
    for _ in range(WINDOWS):
        drifted = False
        for c, part in truth["columns"].items():
            shares = np.asarray(part["counts"], dtype=float) / sum(part["counts"])
            counts = rng.multinomial(1_000_000, shares)
            window = {**part, "counts": counts.tolist(), "nulls": int(part["nulls"] * 2.5)}
            if "sums" in part:
                means = np.divide(part["sums"], part["counts"], out=np.zeros(len(counts)), where=np.array(part["counts"]) > 0)
                window["sums"] = (counts * means).tolist()
            if "unseen" in part:
                window["unseen"] = 0
            drifted |= bool(decide_column(c, plan["columns"][c], window, 1_000_000, cfg, True)["drifted"])
        alarms += drifted
    assert alarms <= 1


def test_the_domain_classifier_raises_at_most_one_alarm_in_20_windows_of_1000_rows(plan, train) -> None:
    feats = plan["schema"]["features"]
    reference = train.sample(5000, random_state=0)
    aucs = [domain_classifier(reference, generate_transactions(1000, seed=200 + i), feats["numeric"],
                              feats["categorical"], DriftSection().multivariate_auc)["auc"] for i in range(WINDOWS)]
    assert sum(a > DriftSection().multivariate_auc for a in aucs) <= 1
    assert max(aucs) < 0.6 and np.median(aucs) < 0.55


def test_the_drift_knob_at_0_3_is_detected_in_at_least_19_of_20_windows_of_5000_rows(plan) -> None:
    detected = sum(_alarmed(column_verdicts(plan, generate_transactions(5000, seed=400 + i, drift=0.3), blocks=2))
                   for i in range(WINDOWS))
    assert detected >= 19


def test_drift_0_5_flags_shifted_columns_and_no_unshifted_one(plan) -> None:
    verdicts = column_verdicts(plan, generate_transactions(5000, seed=500, drift=0.5), blocks=2)
    drifted = {c for c, v in verdicts.items() if v["drifted"]}
    assert {"amount", "avg_amount_30d", "device"} <= drifted <= SHIFTED | {"card_present", "distance_from_home_km"}
    assert not drifted & UNSHIFTED
    calm = column_verdicts(plan, generate_transactions(5000, seed=501, drift=0.0))
    assert not {c for c, v in calm.items() if v["drifted"]}


def test_below_min_rows_the_answer_is_not_enough_data_not_no_drift(plan) -> None:
    verdicts = column_verdicts(plan, generate_transactions(300, seed=600, drift=2.0))
    assert {v["drifted"] for v in verdicts.values()} == {None}
    assert max(v["value"] for v in verdicts.values()) > 0.1  # the statistics are there, the decision is not


def test_per_column_threshold_and_method_override(plan) -> None:
    window = generate_transactions(5000, seed=700, drift=0.5)
    cfg = DriftSection(per_column={"avg_amount_30d": 5.0}, method="wasserstein")
    verdicts = column_verdicts(plan, window, cfg)
    assert verdicts["avg_amount_30d"]["threshold"] == 5.0 and not verdicts["avg_amount_30d"]["drifted"]
    assert verdicts["amount"]["statistic"] == "wasserstein" and verdicts["country"]["statistic"] == "jensenshannon"


def test_counts_of_any_block_split_add_up_to_the_one_shot_counts(plan) -> None:
    window = generate_transactions(3000, seed=800, drift=0.4)
    one = column_verdicts(plan, window, blocks=1)
    many = column_verdicts(plan, window, blocks=7)
    assert {c: v["value"] for c, v in one.items()} == pytest.approx({c: v["value"] for c, v in many.items()})


def test_a_per_column_threshold_for_a_column_the_version_lacks_is_refused(plan) -> None:
    from raypipe.errors import SpecError
    from raypipe.monitor.check import check_per_column

    check_per_column(DriftSection(per_column={"amount": 0.3}), plan)
    with pytest.raises(SpecError, match=r"monitor.drift.per_column: \['amont'\] .* use some of .*'amount'"):
        check_per_column(DriftSection(per_column={"amont": 0.3}), plan)
