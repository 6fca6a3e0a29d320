"""The prediction log's contract without Ray: ids, the writer's buffer, files and partitions."""
from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pyarrow.parquet as pq
import pytest

from raypipe import predlog
from raypipe.predlog import LogFormat, PredictionLogWriter
from raypipe.store import Store

SCHEMA = {
    "columns": {"amount": {"type": "number"}, "hour": {"type": "integer"}, "country": {"type": "string"},
                "card_number": {"type": "string"}, "tid": {"type": "string"}},
    "features": {"numeric": ["amount", "hour"], "categorical": ["country", "card_number"]},
    "id_columns": ["tid"],
    "target": {"name": "y", "type": "integer", "classes": ["0", "1"]},
}
UTC = dt.timezone.utc


def entry(fmt: LogFormat, i: int, *, many: int = 0, ts: float | None = None, role: str = "champion") -> tuple:
    rows = [{"amount": 1.5 * i, "hour": i, "country": "DE", "card_number": f"4111-{i:04d}", "tid": f"t{i}"}]
    rows = rows * many if many else rows
    answers = [{"prediction": i % 2, "scores": {"0": 0.25, "1": 0.75}}] * len(rows)
    return (predlog.new_request_id(), bool(many), ts or time.time(), 7, role, rows, answers, fmt)


def wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_request_ids_are_uuid7_and_carry_their_time():
    before = dt.datetime.now(UTC).replace(microsecond=0)
    ids = [predlog.new_request_id() for _ in range(200)]
    u = uuid.UUID(ids[0])
    assert u.version == 7 and u.variant == uuid.RFC_4122 and len(set(ids)) == 200
    made = predlog.request_id_time(ids[0])
    assert before <= made <= dt.datetime.now(UTC)
    assert predlog.request_id_time(ids[0] + ":3") == made  # a list row's id
    assert predlog.request_id_time("client-chose-this") is None
    assert predlog.request_id_time(str(uuid.uuid4())) is None  # a v4 carries no time
    assert predlog.row_ids("abc", 3, many=True) == ["abc:0", "abc:1", "abc:2"]
    assert predlog.row_ids("abc", 1, many=False) == ["abc"]


def test_log_format_columns_follow_the_contract_and_leave_out_excluded_columns():
    fmt = LogFormat(SCHEMA, "classification", ["card_number"])
    assert fmt.schema.names == ["amount", "hour", "country", "tid", "__request_id", "__ts", "__version", "__role",
                                "__source", "__prediction", "__scores"]
    assert str(fmt.schema.field("__ts").type) == "timestamp[us, tz=UTC]"
    assert str(fmt.schema.field("__scores").type) == "map<string, double>"
    assert LogFormat(SCHEMA, "regression").schema.field("__prediction").type == "double"
    assert LogFormat(SCHEMA, "clustering").schema.names[-1] == "__cluster"
    assert LogFormat(SCHEMA, "anomaly").schema.names[-2:] == ["__is_anomaly", "__anomaly_score"]
    # an integer class answered as 1 is the class "1" (not "1.0")
    assert fmt.answers_from_records([{"prediction": 1, "scores": {}}])["__prediction"] == ["1"]


def test_writer_flushes_by_size_and_writes_whole_files_in_hour_folders(tmp_path):
    fmt = LogFormat(SCHEMA, "classification", ["card_number"])
    w = PredictionLogWriter(tmp_path, "p", writer_id="w1", flush_rows=5, flush_seconds=3600, max_buffer_rows=100)
    try:
        for i in range(4):
            assert w.add([entry(fmt, i)], 1)
        w.add([entry(fmt, 4, many=3)], 3)  # 7 rows: over flush_rows, written without waiting for the age
        wait_until(lambda: w.totals["written"] == 7, "the size flush")
    finally:
        w.close()
    files = predlog.window_files(tmp_path, "p")
    assert len(files) == 1 and files[0].endswith("/w1-000000.parquet")
    now = dt.datetime.now(UTC)
    assert f"/predictions/p/date={now:%Y-%m-%d}/hour=" in files[0]
    table = pq.read_table(files[0])
    assert table.num_rows == 7 and "card_number" not in table.column_names
    assert b"4111-" not in open(files[0], "rb").read()  # the excluded column is nowhere in the file
    ids = table["__request_id"].to_pylist()
    assert ids[4:] == [f"{ids[4].split(':')[0]}:{k}" for k in range(3)]
    assert set(table["__source"].to_pylist()) == {"serve"} and set(table["__version"].to_pylist()) == {7}
    assert [f for f in Store(tmp_path).walk_files() if "tmp" in f] == []  # no temporary file left


def test_writer_flushes_by_age_and_on_close(tmp_path):
    fmt = LogFormat(SCHEMA, "classification")
    w = PredictionLogWriter(tmp_path, "p", writer_id="w2", flush_rows=1000, flush_seconds=0.2, max_buffer_rows=2000)
    w.add([entry(fmt, 1)], 1)
    wait_until(lambda: w.totals["written"] == 1, "the age flush")
    w2 = PredictionLogWriter(tmp_path, "p", writer_id="w3", flush_rows=1000, flush_seconds=3600, max_buffer_rows=2000)
    w2.add([entry(fmt, 2), entry(fmt, 3)], 2)
    assert w2.totals["written"] == 0
    w2.close()  # what Serve's graceful shutdown calls (ModelServer.__del__)
    assert w2.totals["written"] == 2
    assert not w2.add([entry(fmt, 4)], 1)  # closed: dropped and counted
    w.close()
    assert predlog.read_log_table(tmp_path, "p").num_rows == 3


def test_a_full_buffer_drops_and_counts_rows_and_never_waits(tmp_path):
    """A write that hangs (slow storage) holds its rows; new rows past max_buffer_rows are dropped at once."""
    fmt = LogFormat(SCHEMA, "classification")
    release = threading.Event()
    counts: list[tuple[str, int]] = []
    w = PredictionLogWriter(tmp_path, "p", writer_id="w4", flush_rows=2, flush_seconds=3600, max_buffer_rows=5,
                            on_count=lambda s, n: counts.append((s, n)))
    original = w._write
    w._write = lambda *args: (release.wait(30), original(*args))[1]  # storage that hangs until released
    try:
        assert w.add([entry(fmt, 0, many=2)], 2)  # the writer takes these two and hangs on them
        wait_until(lambda: w.held == 2 and not w._entries, "the hanging write to start")
        assert w.add([entry(fmt, 1, many=3)], 3)  # 5 held: the limit
        t0 = time.monotonic()
        results = [w.add([entry(fmt, i)], 1) for i in range(50)]
        assert time.monotonic() - t0 < 5  # never waited on the hanging write (a bound, not a timing claim)
        assert not any(results)
    finally:
        release.set()
        w.close()
    assert w.totals == {"buffered": 5, "written": 5, "dropped": 50, "failed": 0, "recovered": 0}
    assert sum(n for s, n in counts if s == "dropped") == 50 and counts[-1] == ("held", 0)


def test_a_failed_write_is_counted_never_raised_and_its_rows_wait_in_the_spool(tmp_path):
    (tmp_path / "predictions").write_text("a file where the log's folder should be")
    w = PredictionLogWriter(tmp_path, "p", writer_id="w5", flush_rows=1, flush_seconds=3600, max_buffer_rows=10)
    w.add([entry(LogFormat(SCHEMA, "classification"), 1)], 1)
    w.close()
    assert w.totals["failed"] == 1 and w.totals["written"] == 0
    (tmp_path / "predictions").unlink()  # storage is back: the next writer writes the kept rows
    w2 = PredictionLogWriter(tmp_path, "p", writer_id="w6", flush_rows=1, flush_seconds=3600, max_buffer_rows=10)
    w2.close()
    assert w2.totals["recovered"] == 1 and predlog.read_log_table(tmp_path, "p").num_rows == 1


def _write_at(store_dir, when: dt.datetime, n: int = 2) -> None:
    fmt = LogFormat(SCHEMA, "classification")
    table = fmt.table({"amount": [1.0] * n}, {"__prediction": ["1"] * n, "__scores": [{"1": 1.0}] * n},
                      [f"{when:%d%H}-{k}" for k in range(n)], [when + dt.timedelta(minutes=10 * k) for k in range(n)],
                      1, "champion", "predict")
    predlog.write_log(store_dir, "p", table, f"t-{when:%d%H}")


def test_partitions_of_a_window_are_its_hours_only(tmp_path):
    t0 = dt.datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    for h in range(0, 30, 2):  # every other hour over two days
        _write_at(tmp_path, t0 + dt.timedelta(hours=h))
    one = predlog.list_partitions(tmp_path, "p", t0 + dt.timedelta(hours=4, minutes=5), t0 + dt.timedelta(hours=4, minutes=50))
    assert [p.path for p in one] == ["date=2026-03-02/hour=02"]
    across_midnight = predlog.list_partitions(tmp_path, "p", t0, t0 + dt.timedelta(hours=4))
    assert [p.path for p in across_midnight] == ["date=2026-03-01/hour=22", "date=2026-03-02/hour=00"]
    naive = predlog.list_partitions(tmp_path, "p", dt.datetime(2026, 3, 2, 0), dt.datetime(2026, 3, 2, 1))
    assert [p.path for p in naive] == ["date=2026-03-02/hour=00"]  # naive datetimes are UTC
    assert len(predlog.list_partitions(tmp_path, "p")) == 15
    later = predlog.list_partitions(tmp_path, "p", start=t0 + dt.timedelta(hours=25))
    assert [p.path for p in later] == ["date=2026-03-03/hour=00", "date=2026-03-03/hour=02"]
    long = predlog.list_partitions(tmp_path, "p", t0 - dt.timedelta(days=30), t0 + dt.timedelta(hours=1))  # listed
    assert [p.path for p in long] == ["date=2026-03-01/hour=22"]
    assert predlog.list_partitions(tmp_path, "p", t0, t0) == []
    assert predlog.list_partitions(tmp_path, "absent", t0, t0 + dt.timedelta(hours=1)) == []
    files = predlog.window_files(tmp_path, "p", t0, t0 + dt.timedelta(hours=1))
    assert len(files) == 1 and files[0].endswith("/date=2026-03-01/hour=22/t-0122-000000.parquet")


def test_rows_of_a_batch_spanning_hours_go_to_each_hour(tmp_path):
    fmt = LogFormat(SCHEMA, "regression")
    t = dt.datetime(2026, 3, 1, 9, 59, 59, tzinfo=UTC)
    table = fmt.table({}, {"__prediction": [1.0, 2.0]}, ["a", "b"], [t, t + dt.timedelta(seconds=2)], 3, "champion",
                      "serve")
    paths = predlog.write_log(tmp_path, "p", table, "w", seq=4)
    assert [p.split("predictions/p/")[1] for p in paths] == ["date=2026-03-01/hour=09/w-000004.parquet",
                                                              "date=2026-03-01/hour=10/w-000005.parquet"]
    assert sorted(predlog.read_log_table(tmp_path, "p", columns=["__request_id"])["__request_id"].to_pylist()) == ["a", "b"]


@pytest.mark.parametrize("start_h, end_h, expected", [(0, 1, 1), (0, 3, 3), (1, 2, 1), (2, 10, 1)])
def test_read_window_returns_rows_in_start_end(ray_session, tmp_path, start_h, end_h, expected):
    """read_window through Ray Data: start <= __ts < end, rows of the boundary hours cut out."""
    t0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    fmt = LogFormat(SCHEMA, "regression")
    times = [t0 + dt.timedelta(minutes=30), t0 + dt.timedelta(hours=1, minutes=59), t0 + dt.timedelta(hours=2)]
    table = fmt.table({"amount": [1.0, 2.0, 3.0]}, {"__prediction": [0.1, 0.2, 0.3]}, ["a", "b", "c"], times, 1,
                      "champion", "serve")
    predlog.write_log(tmp_path, "p", table, "w")
    ds = predlog.read_window(tmp_path, "p", t0 + dt.timedelta(hours=start_h), t0 + dt.timedelta(hours=end_h))
    rows = ds.take_all()
    assert len(rows) == expected
    assert all(t0 + dt.timedelta(hours=start_h) <= r["__ts"] < t0 + dt.timedelta(hours=end_h) for r in rows)


def test_audio_inputs_are_logged_as_their_decoded_waveform():
    import numpy as np

    schema = {"columns": {"audio": {"type": "audio", "shape": [4], "sample_rate": 8000}, "speaker": {"type": "string"},
                          "label": {"type": "string"}},
              "features": {"audio": ["audio"]}, "id_columns": ["speaker"],
              "target": {"name": "label", "type": "string", "task": "classification", "classes": ["a", "b"]}}
    fmt = LogFormat(schema, "classification")
    answers = fmt.answers_from_records([{"prediction": "a", "scores": {"a": 0.9, "b": 0.1}}] * 2)
    t = fmt.table({"audio": [np.arange(4, dtype=np.float32), None], "speaker": ["x", "y"]}, answers, ["r1", "r2"],
                  0.0, 1, "champion", "serve")
    assert str(t.schema.field("audio").type) == "list<item: float>"
    assert t["audio"].to_pylist() == [[0.0, 1.0, 2.0, 3.0], None]
