"""Late labels joined to the prediction log (files only; the endpoint's /feedback is in tests/serve)."""
from __future__ import annotations

import datetime as dt

import pytest

from raypipe import predlog
from raypipe.errors import DataValidationError
from raypipe.feedback import normalise_labels, record_feedback
from raypipe.predlog import LogFormat

SCHEMA = {
    "columns": {"amount": {"type": "number"}, "order_id": {"type": "integer"}},
    "features": {"numeric": ["amount"]},
    "id_columns": ["order_id"],
    "target": {"name": "y", "type": "integer", "classes": ["0", "1"]},
}


@pytest.fixture
def logged(tmp_path):
    """Two requests in the log: a list of three rows (server-made id) and one row with a client's id."""
    fmt = LogFormat(SCHEMA, "classification")
    rid = predlog.new_request_id()
    now = dt.datetime.now(dt.timezone.utc)
    table = fmt.table({"amount": [1.0, 2.0, 3.0, 4.0], "order_id": [17, 18, 19, 17]},
                      {"__prediction": ["0", "1", "0", "1"], "__scores": [{"0": 0.5, "1": 0.5}] * 4},
                      [*predlog.row_ids(rid, 3, many=True), "client-id-1"], now, 2, "champion", "serve")
    predlog.write_log(tmp_path, "p", table, "w")
    return tmp_path, rid


def test_labels_join_by_request_id_and_unknown_ids_are_counted_not_stored(logged):
    storage, rid = logged
    report = record_feedback(storage, "p", [f"{rid}:0", f"{rid}:2", "client-id-1", "never-answered", rid],
                             [1, "0", 0, 0, 1], task="classification", classes=["0", "1"])
    # `rid` alone names no row: the response gave the list's rows their own ids
    assert (report.rows, report.matched, report.unknown, report.stored) == (5, 3, 2, 3)
    assert report.unknown_ids == ["never-answered", rid]
    stored = predlog.read_feedback(storage, "p").to_pylist()
    assert {(r["request_id"], r["label"], r["source"]) for r in stored} == {
        (f"{rid}:0", "1", "file"), (f"{rid}:2", "0", "file"), ("client-id-1", "0", "file")}
    assert all(r["id_column"] is None and r["received_at"].tzinfo is not None for r in stored)


def test_client_ids_without_a_time_are_found_by_scanning_the_id_column(logged):
    storage, _ = logged
    report = record_feedback(storage, "p", ["client-id-1"], [0], task="classification", classes=["0", "1"])
    assert (report.matched, report.unknown, report.stored) == (1, 0, 1)


def test_a_second_label_for_an_id_is_a_conflict_and_the_first_is_kept(logged):
    storage, rid = logged
    first = record_feedback(storage, "p", [f"{rid}:1", f"{rid}:1", f"{rid}:1"], [1, 1, 0], task="classification",
                            classes=["0", "1"])
    assert (first.matched, first.stored, first.duplicates, first.conflicts) == (3, 1, 1, 1)
    assert first.conflict_ids == [f"{rid}:1"]
    again = record_feedback(storage, "p", [f"{rid}:1", f"{rid}:1"], [0, 1], task="classification",
                            classes=["0", "1"])  # a later call: checked against what is stored
    assert (again.stored, again.duplicates, again.conflicts) == (0, 1, 1)
    labels = [r["label"] for r in predlog.read_feedback(storage, "p").to_pylist() if r["request_id"] == f"{rid}:1"]
    assert labels == ["1"]


def test_labels_join_by_an_id_column_compared_as_text(logged):
    storage, _ = logged
    report = record_feedback(storage, "p", ["17", 19, 99], [1, 0, 1], task="classification", classes=["0", "1"],
                             id_column="order_id")
    assert (report.rows, report.matched, report.unknown, report.stored) == (3, 2, 1, 2)
    assert report.unknown_ids == ["99"]
    stored = {(r["id_column"], r["id_value"], r["label"]) for r in predlog.read_feedback(storage, "p").to_pylist()}
    assert stored == {("order_id", "17", "1"), ("order_id", "19", "0")}
    conflict = record_feedback(storage, "p", [17], [0], task="classification", classes=["0", "1"], id_column="order_id")
    assert conflict.conflicts == 1 and conflict.stored == 0


def test_an_id_column_not_in_the_log_is_refused(tmp_path):
    fmt = LogFormat(SCHEMA, "regression", exclude_columns=["order_id"])
    predlog.write_log(tmp_path, "p", fmt.table({"amount": [1.0]}, {"__prediction": [2.0]}, ["a"],
                                               dt.datetime.now(dt.timezone.utc), 1, "champion", "serve"), "w")
    with pytest.raises(DataValidationError, match="order_id.*exclude_columns"):
        record_feedback(tmp_path, "p", [17], [1.0], task="regression", id_column="order_id")


def test_bad_labels_are_refused_naming_the_row_before_anything_is_stored(logged):
    storage, rid = logged
    with pytest.raises(DataValidationError, match=r"label of row 1: '2' is not a class.*classes: 0, 1"):
        record_feedback(storage, "p", [f"{rid}:0", f"{rid}:1"], [1, 2], task="classification", classes=["0", "1"])
    with pytest.raises(DataValidationError, match="label of row 0: missing"):
        record_feedback(storage, "p", [f"{rid}:0"], [None], task="classification", classes=["0", "1"])
    with pytest.raises(DataValidationError, match="request_id of row 1: missing"):
        record_feedback(storage, "p", [f"{rid}:0", None], [1, 1], task="classification", classes=["0", "1"])
    assert predlog.read_feedback(storage, "p").num_rows == 0


def test_label_types_per_task():
    assert normalise_labels([1, 1.0, "1", True], "classification") == ["1", "1", "1", "True"]
    assert normalise_labels([3, "2.5"], "regression") == [3.0, 2.5]
    assert normalise_labels([1, 0, "true", False], "anomaly") == [True, False, True, False]
    with pytest.raises(DataValidationError, match="not a number"):
        normalise_labels(["abc"], "regression")
    with pytest.raises(DataValidationError, match="not a finite number"):
        normalise_labels([float("inf")], "regression")
    with pytest.raises(DataValidationError, match="not an anomaly flag"):
        normalise_labels(["maybe"], "anomaly")
    with pytest.raises(DataValidationError, match="clustering model has no labels"):
        normalise_labels([1], "clustering")
