"""Datetime columns in monitoring: compared by their weekday and hour-of-day mix (absolute dates always
move forward), with the share of window dates outside the training range reported, not decided on.
A reference built from a generated frame with the validate stage's own profile code (no Ray)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raypipe.errors import SpecError
from raypipe.monitor.check import check_per_column
from raypipe.monitor.window import block_counts, merge
from raypipe.spec import DriftSection
from tests.monitor.helpers import column_verdicts, reference_plan

TRAIN, WINDOW = 6000, 4000
HOURS_2023 = 365 * 24


def _times(rows: int, seed: int, year: int = 2023, weekend_nights: bool = False) -> pd.Series:
    """Random whole hours of ``year``, minutes added (a time of day); only Sat/Sun 00-05 when asked."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(f"{year}-01-01")
    t = start + pd.to_timedelta(rng.integers(0, HOURS_2023, rows * 20 if weekend_nights else rows), unit="h")
    if weekend_nights:
        t = t[(t.weekday >= 5) & (t.hour < 6)][:rows]
    return pd.Series(t + pd.to_timedelta(rng.integers(0, 60, len(t)), unit="m"))


def _frame(rows: int, seed: int, **kwargs) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    mondays = pd.Timestamp("2023-01-02") + pd.to_timedelta(7 * rng.integers(0, 52, rows), unit="D")
    return pd.DataFrame({"at": _times(rows, seed, **kwargs), "paid_on": mondays.strftime("%d/%m/%Y"),
                         "amount": rng.exponential(40.0, rows), "y": rng.integers(0, 2, rows)})


@pytest.fixture(scope="module")
def plan():
    return reference_plan(_frame(TRAIN, seed=1), target="y", id_columns=(), formats={"paid_on": "dmy"})


def test_the_plan_has_weekday_and_hour_parts_read_with_each_columns_format(plan):
    assert {"at:weekday", "at:hour", "paid_on:weekday"} <= set(plan["columns"])
    # paid_on holds dates only (no time of day): no hour part; the raw columns are never compared
    assert not {"paid_on:hour", "at", "paid_on"} & set(plan["columns"])
    paid = plan["columns"]["paid_on:weekday"]
    # every paid_on is a Monday read day first (02/01/2023 = 2 January); month first they would spread
    assert paid["kind"] == "categorical" and paid["ref_counts"][paid["values"].index("Mon")] == 5000
    assert sum(plan["columns"]["at:hour"]["ref_counts"]) == 5000  # the reference sample's rows


def test_same_mix_is_not_drift_and_counts_merge_across_blocks(plan):
    window = _frame(WINDOW, seed=2)
    missing = window.index[::20]
    window.loc[missing, "at"] = pd.NaT
    verdicts = column_verdicts(plan, window, blocks=3)
    for c in ("at:weekday", "at:hour", "paid_on:weekday"):
        assert verdicts[c]["drifted"] is False, verdicts[c]
        assert verdicts[c]["outside_training_range"] < 0.01 and verdicts[c]["date_column"] == c.split(":")[0]
    assert verdicts["at:hour"]["null_rate"] == pytest.approx(len(missing) / WINDOW)
    one = block_counts(window, plan)[0]["columns"]
    three = merge([block_counts(window.iloc[i:i + 1400], plan)[0] for i in range(0, WINDOW, 1400)])["columns"]
    assert {c: three[c] for c in ("at:weekday", "at:hour")} == {c: one[c] for c in ("at:weekday", "at:hour")}


def test_weekend_nights_drift_on_both_parts(plan):
    verdicts = column_verdicts(plan, _frame(WINDOW, seed=3, weekend_nights=True), blocks=2)
    assert verdicts["at:weekday"]["drifted"] and verdicts["at:hour"]["drifted"]
    assert verdicts["at:weekday"]["outside_training_range"] < 0.01


def test_a_later_year_with_the_same_mix_is_not_drift_but_is_outside_the_training_range(plan):
    verdicts = column_verdicts(plan, _frame(WINDOW, seed=4, year=2026))
    assert verdicts["at:weekday"]["drifted"] is False and verdicts["at:hour"]["drifted"] is False
    assert verdicts["at:weekday"]["outside_training_range"] == pytest.approx(1.0)
    assert verdicts["at:weekday"]["training_range"][0].startswith("2023-01-01")


def test_per_column_names_a_date_column_or_one_of_its_parts(plan):
    weekend = _frame(WINDOW, seed=3, weekend_nights=True)
    relaxed = DriftSection(per_column={"at": 50.0, "at:hour": 60.0})
    check_per_column(relaxed, plan)
    verdicts = column_verdicts(plan, weekend, relaxed)
    assert verdicts["at:weekday"]["threshold"] == 50.0 and verdicts["at:hour"]["threshold"] == 60.0
    assert verdicts["at:weekday"]["drifted"] is False and verdicts["paid_on:weekday"]["threshold"] == 0.1
    with pytest.raises(SpecError, match="at:minute"):
        check_per_column(DriftSection(per_column={"at:minute": 0.2}), plan)


def test_the_page_draws_a_drifted_date_part_and_lists_the_training_range(plan, tmp_path):
    from raypipe.monitor.drift import decide_column
    from raypipe.monitor.report import write_report
    from raypipe.store import Store

    doc = block_counts(_frame(WINDOW, seed=3, year=2026, weekend_nights=True), plan)[0]
    columns = {c: decide_column(c, plan["columns"][c], p, doc["valid"], DriftSection(), True)
               for c, p in doc["columns"].items()}
    report = {"pipeline": "t", "version": 1, "window_id": "w", "input": "x", "rows": WINDOW, "valid_rows": WINDOW,
              "invalid_rows": 0, "method": "psi", "status": "drift", "min_rows": 1000,
              "drifted": [c for c, e in columns.items() if e["drifted"]], "columns": columns,
              "prediction_drift": None, "multivariate": {}, "performance": {"kind": "none"}}
    plots = write_report(Store(str(tmp_path)), report, plan, doc)
    assert {"plots/at_weekday.png", "plots/at_hour.png"} <= set(plots)
    html = (tmp_path / "drift.html").read_text()
    # one row per date column (not per part): its training range, and every window date outside it
    assert html.count("2023-01-01T") == 1 and "<td>1</td>" in html.split("<h3>Dates</h3>")[1]
