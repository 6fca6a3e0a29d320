"""The prediction log's crash spool: a writer killed with SIGKILL loses nothing it accepted; the next
writer of the pipeline writes the dead one's rows (once), counts them, and leaves a live writer's
spool alone. Real processes, real signals, no Ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc

from raypipe import predlog
from raypipe.predlog import LogFormat, PredictionLogWriter, write_entries
from raypipe.spool import Spool, spool_root
from raypipe.store import Store
from tests.test_predlog import SCHEMA, entry, wait_until

VICTIM = textwrap.dedent("""
    import sys, time
    from raypipe.predlog import LogFormat, PredictionLogWriter
    from tests.test_predlog import SCHEMA, entry
    fmt = LogFormat(SCHEMA, "classification", ["card_number"])
    w = PredictionLogWriter(sys.argv[1], "p", writer_id="victim", flush_rows=10_000, flush_seconds=3600)
    ids = []
    for i in range(int(sys.argv[2]) + int(sys.argv[3])):
        if i == int(sys.argv[2]):
            w.flush()  # the first requests are written; the rest are only held when the kill comes
        e = entry(fmt, i, many=3 if i % 5 == 0 else 0)
        assert w.add([e], len(e[5]))
        ids += [f"{e[0]}:{k}" for k in range(3)] if e[1] else [e[0]]
    print(" ".join(ids), flush=True)
    time.sleep(600)
""")


def _killed_writer(storage: Path, written: int, held: int) -> list[str]:
    """Run a writer in its own process: it writes ``written`` requests, then holds ``held`` more when it
    is SIGKILLed; the row ids it accepted."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, str(storage), str(written), str(held)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        ids = proc.stdout.readline().split()
        assert ids, "the victim printed no ids"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    return ids


def _logged_ids(storage: Path) -> list[str]:
    t = predlog.read_log_table(storage, "p", columns=["__request_id"])
    return t["__request_id"].to_pylist()


def test_a_killed_writer_loses_nothing_and_the_next_writer_writes_its_rows_once(tmp_path):
    ids = _killed_writer(tmp_path, written=50, held=12)  # requests 0, 5, ... carry 3 rows: 70 + 18 rows
    assert len(ids) == 88
    written = _logged_ids(tmp_path)
    assert len(written) == 70 and set(written) < set(ids)
    spool = spool_root(Store(tmp_path), "p") / "victim"
    left = b"".join(f.read_bytes() for f in spool.glob("seg-*.jsonl"))
    assert left.count(b"\n") >= 1 and b"4111-" not in left  # the excluded column never reaches the disk either

    counts: list[tuple[str, int]] = []
    heir = PredictionLogWriter(tmp_path, "p", writer_id="heir", flush_rows=10, flush_seconds=3600,
                               on_count=lambda s, n: counts.append((s, n)))
    wait_until(lambda: heir.totals["recovered"] > 0, "the heir to recover the victim's spool")
    heir.close()
    logged = _logged_ids(tmp_path)
    assert sorted(logged) == sorted(ids)  # every accepted row, none twice
    assert heir.totals["recovered"] == 18 and ("recovered", 18) in counts
    assert not spool.exists()
    t = predlog.read_log_table(tmp_path, "p")
    assert "card_number" not in t.column_names and set(t["__version"].to_pylist()) == {7}


def test_a_buffer_written_before_the_kill_is_rewritten_in_place_not_twice(tmp_path):
    """Killed between writing a buffer's files and deleting its segment: recovery names the files as the
    writer did, so they are replaced, and a torn last line (killed inside a write) is skipped."""
    store, fmt = Store(tmp_path), LogFormat(SCHEMA, "classification")
    spool = Spool(spool_root(store, "p"), "dead")
    entries = [entry(fmt, i) for i in range(6)]
    spool.append(entries)
    segment = spool.rotate()
    write_entries(store, "p", "dead", segment, entries)  # its files are in place ...
    last = entry(fmt, 6)
    spool.append([last])
    with open(spool.dir / "seg-000001.jsonl", "ab") as f:
        f.write(b'["torn", false, 1.0, 7, "champ')  # ... and the process died inside the next write
    os.close(spool._lock_fd)  # what the kernel does for a dead process
    assert len(_logged_ids(tmp_path)) == 6

    heir = PredictionLogWriter(tmp_path, "p", writer_id="heir", flush_rows=10, flush_seconds=3600)
    heir.close()
    logged = _logged_ids(tmp_path)
    assert sorted(logged) == sorted(e[0] for e in [*entries, last])  # 7 rows, none twice, no torn one
    assert heir.totals["recovered"] == 7


def test_a_live_writers_spool_is_left_alone(tmp_path):
    fmt = LogFormat(SCHEMA, "classification")
    live = PredictionLogWriter(tmp_path, "p", writer_id="live", flush_rows=100, flush_seconds=3600)
    try:
        live.add([entry(fmt, 1)], 1)
        other = PredictionLogWriter(tmp_path, "p", writer_id="other", flush_rows=100, flush_seconds=3600)
        other.close()
        assert other.totals["recovered"] == 0 and _logged_ids(tmp_path) == []
        assert any((spool_root(Store(tmp_path), "p") / "live").glob("seg-*.jsonl"))
    finally:
        live.close()
    assert len(_logged_ids(tmp_path)) == 1 and not (spool_root(Store(tmp_path), "p") / "live").exists()


def test_spool_lines_round_trip_numpy_answers_and_formats(tmp_path):
    import numpy as np

    fmt = LogFormat(SCHEMA, "classification", ["card_number"])
    spool = Spool(tmp_path, "w")
    e = entry(fmt, 3)
    e = (*e[:6], [{"prediction": np.int64(1), "scores": {"0": np.float64(0.1), "1": np.float64(0.9)}}], fmt)
    spool.append([e])
    line = json.loads((spool.dir / "seg-000000.jsonl").read_text())
    assert line[6] == [{"prediction": 1, "scores": {"0": 0.1, "1": 0.9}}] and "card_number" not in line[5][0]
    desc = json.loads((spool.dir / "formats.jsonl").read_text())
    rebuilt = LogFormat.from_description({k: v for k, v in desc.items() if k != "key"})
    assert rebuilt.schema == fmt.schema
    table = predlog._entries_table([(*e[:7], rebuilt)])
    assert table.filter(pc.equal(table["__prediction"], "1")).num_rows == 1
    spool.close()
