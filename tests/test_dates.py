"""The date parser and the rule that decides a text column holds dates (raypipe/dates.py)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from raypipe.dates import infer_format, is_datetime_column, parse, unparsable


def _iso(values, fmt="iso") -> list[str | None]:
    got, _ = parse(values, fmt)
    return [None if pd.isna(v) else v.isoformat() for v in got]


def test_iso_strings_with_and_without_zones_become_naive_utc() -> None:
    values = ["2024-03-01", "2024-03-01 12:30:00", "2024-03-01T12:30:00Z", " 2024-03-01T14:30:00+02:00 ",
              "2024-03-01T12:30:00.250Z", "2024-03-01 12:30"]
    assert _iso(values) == ["2024-03-01T00:00:00", "2024-03-01T12:30:00", "2024-03-01T12:30:00", "2024-03-01T12:30:00",
                            "2024-03-01T12:30:00.250000", "2024-03-01T12:30:00"]


def test_day_month_order_follows_the_column_format_and_iso_is_always_read() -> None:
    values = ["01/03/2024", "01.03.2024 08:15", "2024/03/01", "2024-03-01"]
    assert _iso(values, "dmy") == ["2024-03-01T00:00:00", "2024-03-01T08:15:00", "2024-03-01T00:00:00",
                                   "2024-03-01T00:00:00"]
    assert _iso(["03/01/2024", "03/01/2024 23:59:59", "2024-03-01"], "mdy") == [
        "2024-03-01T00:00:00", "2024-03-01T23:59:59", "2024-03-01T00:00:00"]
    assert _iso(["01/03/2024"], "iso") == [None]  # a slashed day/month is only read in a dmy/mdy column


def test_unparsable_marks_present_non_dates_but_not_missing_values() -> None:
    values = ["2024-03-01", "31/31/2024", "2024-02-30", "2024", "20240301", "next tuesday", None, np.nan, "  ", 7,
              dt.date(2024, 3, 1), dt.datetime(2024, 3, 1, 9, tzinfo=dt.timezone.utc), pd.Timestamp("2024-03-01")]
    assert unparsable(values, "dmy").tolist() == [False, True, True, True, True, True, False, False, False, True,
                                                  False, False, False]


def test_arrow_and_numpy_datetimes_pass_through() -> None:
    aware = pd.Series(pd.to_datetime(["2024-03-01T12:00:00+01:00", None], utc=True))
    got, bad = parse(aware)
    assert got.iloc[0] == pd.Timestamp("2024-03-01 11:00") and pd.isna(got.iloc[1]) and not bad.any()
    dates = pd.Series([dt.date(2020, 1, 31), None], dtype=object)  # an Arrow date32 column as Ray's pandas batch has it
    assert _iso(dates) == ["2020-01-31T00:00:00", None]


@pytest.mark.parametrize("values, expected", [
    (["2024-03-01", "2024-03-02 10:00", "2024-03-03T00:00:00Z"], ("iso", 1.0, False)),
    (["01/03/2024", "13/03/2024", "02/03/2024"], ("dmy", 1.0, False)),      # 13 can only be a day
    (["03/01/2024", "03/13/2024", "03/02/2024"], ("mdy", 1.0, False)),      # 13 can only be a day, second
    (["01/03/2024", "02/03/2024", "12/11/2024"], ("mdy", 1.0, True)),       # every value reads both ways
])
def test_infer_format_decides_the_order_from_the_values(values, expected) -> None:
    assert tuple(infer_format(values * 10)) == expected


def test_dayfirst_settles_an_ambiguous_column() -> None:
    assert infer_format(["01/03/2024", "02/03/2024"], dayfirst=True).format == "dmy"
    assert infer_format(["01/03/2024", "02/03/2024"], dayfirst=False).format == "mdy"
    assert infer_format(["13/03/2024"], dayfirst=False) is None  # forced month first: 13 is no month


def test_threshold_is_a_share_of_present_values() -> None:
    ok = [f"2024-03-{d:02d}" for d in range(1, 29)]
    col = pd.Series(ok * 4 + ["31/31/2024", "n/a"] + [None] * 50, dtype=object)  # 112 dates of 114 present: 98 %
    guess = infer_format(col)
    assert guess.format == "iso" and guess.fraction == pytest.approx(112 / 114)
    assert is_datetime_column(col) and not is_datetime_column(col, threshold=0.99)
    assert not is_datetime_column(pd.Series(ok[:10] + ["garbage"] * 2))  # 83 %: a text column with some dates
    assert not is_datetime_column(pd.Series(["2019", "2020", "2021"] * 5))  # years alone are numbers, not dates
    assert not is_datetime_column(pd.Series([None, "", "  "], dtype=object))
