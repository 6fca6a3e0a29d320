"""The datetime feature operator: calendar parts, cyclic encodings, fitted year scale, serialisation."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from raypipe.model.features.datetimes import DatetimeEncoder
from raypipe.model.features.pipeline import FeaturePipeline


def _row(op: DatetimeEncoder, value, column: str = "when") -> dict[str, float]:
    x = op.transform(pd.DataFrame({column: pd.Series([value], dtype=object)}))
    return dict(zip(op.feature_names, x[0].tolist()))


def test_calendar_parts_and_cycles_of_a_known_timestamp() -> None:
    op = DatetimeEncoder(["when"]).fit(pd.DataFrame({"when": ["2023-01-01 06:00", "2025-01-01 18:00"]}))
    assert op.year_mean_ == {"when": 2024.0} and op.year_scale_ == {"when": 1.0} and op.has_time_ == {"when": True}
    f = _row(op, "2024-12-29T18:30:00Z")  # a Sunday
    assert f["when:year"] == 0.0 and f["when:month"] == pytest.approx(1.0) and f["when:day"] == pytest.approx(28 / 30)
    assert f["when:weekday"] == pytest.approx(1.0) and f["when:hour"] == pytest.approx(18 / 23)
    assert f["when:month_sin"] == pytest.approx(np.sin(2 * np.pi * 11 / 12), abs=1e-6)
    assert f["when:hour_cos"] == pytest.approx(np.cos(2 * np.pi * 18.5 / 24), abs=1e-6)
    assert f["when:missing"] == 0.0
    # December sits next to January on the circle, far apart on the line
    dec, jan = _row(op, "2024-12-15"), _row(op, "2025-01-15")
    assert abs(dec["when:month_sin"] - jan["when:month_sin"]) < 0.6 and dec["when:month"] - jan["when:month"] == 1.0


def test_missing_and_unparsable_values_are_zeros_with_the_indicator() -> None:
    op = DatetimeEncoder(["when"]).fit(pd.DataFrame({"when": ["2024-01-01", "2024-06-01"]}))
    assert op.has_time_ == {"when": False}  # dates only: no hour features
    assert "when:hour" not in op.feature_names and len(op.feature_names) == 9
    for value in (None, np.nan, "31/31/2024", ""):
        f = _row(op, value)
        assert f["when:missing"] == 1.0 and all(v == 0.0 for k, v in f.items() if k != "when:missing")


def test_column_format_decides_day_and_month() -> None:
    frame = pd.DataFrame({"d": ["01/03/2024", "13/03/2024"]})
    dmy = DatetimeEncoder(["d"], formats={"d": "dmy"}).fit(frame)
    mdy = DatetimeEncoder(["d"], formats={"d": "mdy"}).fit(frame)
    assert _row(dmy, "01/03/2024", "d")["d:month"] == pytest.approx(2 / 11)  # March
    assert _row(mdy, "01/03/2024", "d")["d:month"] == 0.0  # January
    assert _row(mdy, "13/03/2024", "d")["d:missing"] == 1.0


def test_blocks_merge_to_the_whole_fit_and_state_round_trips_as_json() -> None:
    rng = np.random.default_rng(0)
    stamps = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 3650 * 24, 600), unit="h")
    frame = pd.DataFrame({"when": stamps.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "day": pd.Series([d.date() for d in stamps], dtype=object)})
    whole = DatetimeEncoder(["when", "day"]).fit(frame)
    parts = [DatetimeEncoder(["when", "day"]).partial_stats(frame.iloc[i : i + 100]) for i in range(0, 600, 100)]
    merged = DatetimeEncoder(["when", "day"]).fit_from_stats(parts)
    assert merged.year_mean_ == pytest.approx(whole.year_mean_) and merged.year_scale_ == pytest.approx(whole.year_scale_)
    assert merged.has_time_ == {"when": True, "day": False}
    loaded = DatetimeEncoder.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert np.array_equal(loaded.transform(frame), whole.transform(frame))
    year = whole.transform(frame)[:, 0]
    assert abs(year.mean()) < 1e-6 and year.std() == pytest.approx(1.0, rel=1e-5)


def test_pipeline_from_a_schema_with_dates_never_one_hot_encodes_them() -> None:
    from types import SimpleNamespace

    from raypipe.features.stage import build
    from raypipe.spec import FeaturesSection

    schema = {"columns": {"x": {"type": "number"}, "c": {"type": "string"},
                          "d": {"type": "datetime", "format": "dmy"}, "t": {"type": "datetime", "format": "iso"}},
              "features": {"numeric": ["x"], "categorical": ["c"], "datetime": ["d", "t"]}}
    fp = build(SimpleNamespace(features=FeaturesSection()), schema)
    assert [op.kind for op in fp.operators] == ["numeric", "categorical", "datetime"]
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"], "d": ["01/03/2024", "13/03/2024", None],
                          "t": [dt.datetime(2024, 3, 1, 9), dt.datetime(2024, 3, 2, 10), None]})
    fp.fit(frame)
    assert not [n for n in fp.feature_names_ if n.startswith(("d=", "t="))]
    assert fp.operators[2].formats == {"d": "dmy", "t": "iso"}
    loaded = FeaturePipeline.from_dict(json.loads(json.dumps(fp.to_dict())))
    rows = [{"x": 1.0, "c": "a", "d": "01/03/2024", "t": "2024-03-01T09:00:00Z"}]
    assert np.array_equal(loaded.transform(rows), fp.transform(frame.iloc[:1]))  # a request's strings, the batch's objects
    assert fp.layout()[2] == {"kind": "datetime", "columns": ["d", "t"], "start": fp.layout()[1]["stop"],
                              "stop": fp.n_features}
