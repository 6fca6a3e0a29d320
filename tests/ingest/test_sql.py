"""The ``sql`` source: SQLite files and a REAL PostgreSQL server, read by Ray Data.

The module-scoped ``pg`` fixture starts PostgreSQL from Debian's binaries (see
``tests/ingest/pg.py``); without them the tests fail and say that ``.ci/run`` installs them.
"""
from __future__ import annotations

import pickle
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest

from raypipe.errors import SpecError
from raypipe.ingest.sql import (
    PostgresConnect,
    SqlSourceError,
    connection_factory,
    read_sql,
    safe_url,
    sql_fingerprint,
)
from raypipe.spec import SqlSource
from tests.ingest.pg import PostgresMissing, pg_bindir, start_postgres

PG_ROWS = 20_000
SQLITE_ROWS = 1_000
PW_ENV = "RP_TEST_PG_PASSWORD"
CREATE_ITEMS = f"""
CREATE TABLE items (
    id integer PRIMARY KEY,
    name text NOT NULL,
    score double precision NOT NULL,
    price numeric(10, 2) NOT NULL,
    qty integer,
    note text,
    created timestamp NOT NULL,
    created_tz timestamptz NOT NULL
);
INSERT INTO items
SELECT g, 'item-' || g, g * 0.5, round((g * 1.37) % 1000, 2),
       CASE WHEN g % 7 = 0 THEN NULL ELSE g % 100 END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || (g % 10) END,
       timestamp '2024-01-01' + g * interval '1 minute',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, {PG_ROWS}) AS g;
"""


@dataclass(frozen=True)
class Pg:
    url: str
    password: str


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server on 127.0.0.1:<free port> with table ``items`` (20,000 rows)."""
    try:
        pg_bindir()
    except PostgresMissing as e:
        pytest.fail(str(e))
    url, password, stop = start_postgres(tempfile.mkdtemp(prefix="rp-pg-", dir="/tmp"))
    try:
        with PostgresConnect(url, password)() as conn:
            conn.execute(CREATE_ITEMS)
        yield Pg(url, password)
    finally:
        stop()


@pytest.fixture
def pg_env(pg: Pg, monkeypatch: pytest.MonkeyPatch) -> Pg:
    monkeypatch.setenv(PW_ENV, pg.password)
    return pg


def pg_source(pg: Pg, **kw) -> SqlSource:
    return SqlSource(type="sql", url=pg.url, password_env=PW_ENV, **{"query": "SELECT * FROM items", **kw})


def expected_items(pg: Pg) -> pd.DataFrame:
    """The table as psycopg returns it (numeric as float), sorted by id."""
    with PostgresConnect(pg.url, pg.password)() as conn:
        cur = conn.execute("SELECT * FROM items ORDER BY id")
        cols = [d.name for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def read_tasks(ds) -> tuple[int, int]:
    """(read tasks run, fewest rows one task returned), from the materialized dataset's stats."""
    stats = ds.stats()
    tasks = int(re.search(r"ReadSQL\S*: (\d+) tasks executed", stats).group(1))
    fewest = int(re.search(r"Output rows per task: (\d+) min", stats).group(1))
    return tasks, fewest


def as_sorted_frame(ds) -> pd.DataFrame:
    return ds.to_pandas().sort_values("id").reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    assert got["id"].is_unique
    for col in want.columns:
        g, w = got[col], want[col]
        assert g.isna().tolist() == w.isna().tolist(), col
        if col.startswith("created"):
            assert pd.to_datetime(g).tolist() == pd.to_datetime(w).tolist(), col
        else:
            assert g.dropna().tolist() == w.dropna().tolist(), col


# --- SQLite ------------------------------------------------------------------------------
@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [(i, f"n{i}", i / 4, None if i % 5 == 0 else i % 9) for i in range(1, SQLITE_ROWS + 1)],
        )
    conn.close()
    return path


def sqlite_source(path: Path, **kw) -> SqlSource:
    return SqlSource(type="sql", url=f"sqlite:///{path}", **{"query": "SELECT * FROM t", **kw})


def test_sqlite_reads_rows_and_values(ray_session, sqlite_db: Path):
    ds = read_sql(sqlite_source(sqlite_db, query="SELECT id, name, amount, qty FROM t WHERE id <= 600;"))
    df = as_sorted_frame(ds)
    assert df["id"].tolist() == list(range(1, 601))
    assert df.loc[9, "name"] == "n10" and df.loc[9, "amount"] == 2.5 and pd.isna(df.loc[9, "qty"])
    assert df.loc[10, "qty"] == 11 % 9


def test_sqlite_sharded_read_uses_several_tasks(ray_session, sqlite_db: Path):
    ds = read_sql(sqlite_source(sqlite_db, shard_keys=["id", "qty"], parallelism=3)).materialize()
    tasks, fewest = read_tasks(ds)
    assert ds.num_blocks() == 3 and tasks == 3 and fewest > SQLITE_ROWS // 5  # hashed evenly
    df = as_sorted_frame(ds)
    assert df["id"].tolist() == list(range(1, SQLITE_ROWS + 1))
    assert df["qty"].isna().sum() == SQLITE_ROWS // 5


def test_sqlite_missing_file(ray_session, tmp_path: Path):
    with pytest.raises(SqlSourceError, match="does not exist"):
        read_sql(sqlite_source(tmp_path / "nope.db"))
    assert not (tmp_path / "nope.db").exists()  # sqlite3.connect would have created it


def test_sqlite_bad_query_and_shard_key(ray_session, sqlite_db: Path):
    with pytest.raises(SqlSourceError, match="no such column: nope\n  fix: correct the SQL"):
        read_sql(sqlite_source(sqlite_db, query="SELECT nope FROM t"))
    # SQLite reads an unknown "nope" as the string 'nope': every row would land in one shard
    with pytest.raises(SqlSourceError, match=r"shard_keys: \['nope'\] not among .*'id', 'name'"):
        read_sql(sqlite_source(sqlite_db, shard_keys=["nope"], parallelism=2))


# --- PostgreSQL ----------------------------------------------------------------------------
def test_pg_unsharded_one_task(ray_session, pg_env: Pg):
    ds = read_sql(pg_source(pg_env)).materialize()
    assert read_tasks(ds)[0] == 1  # Ray then splits that task's output into blocks
    schema = ds.schema()
    types = dict(zip(schema.names, [str(t) for t in schema.types]))
    assert types["price"] == "double" and types["score"] == "double"
    assert types["created"].startswith("timestamp") and types["created_tz"].startswith("timestamp")
    assert_same_rows(as_sorted_frame(ds), expected_items(pg_env))


def test_pg_sharded_read_by_four_tasks(ray_session, pg_env: Pg):
    ds = read_sql(pg_source(pg_env, shard_keys=["id"], parallelism=4)).materialize()
    tasks, fewest = read_tasks(ds)
    assert ds.num_blocks() == 4 and tasks == 4  # the rows never went through the driver
    assert fewest > PG_ROWS // 8  # hashed evenly
    assert str(ds.schema().types[ds.schema().names.index("price")]) == "double"
    assert_same_rows(as_sorted_frame(ds), expected_items(pg_env))


def test_pg_sharded_by_two_keys_with_nulls(ray_session, pg_env: Pg):
    query = "SELECT id, qty, note FROM items WHERE id <= 5000 AND name LIKE 'item-%'"  # % is no placeholder
    ds = read_sql(pg_source(pg_env, query=query, shard_keys=["note", "qty"], parallelism=3)).materialize()
    assert ds.num_blocks() == 3 and read_tasks(ds)[0] == 3
    df = as_sorted_frame(ds)
    assert df["id"].tolist() == list(range(1, 5001))
    assert df["note"].isna().sum() == 5000 // 3


def test_pg_wrong_password_is_not_leaked(ray_session, pg: Pg, monkeypatch: pytest.MonkeyPatch):
    wrong = "Wr0ng-pa55-" + pg.password[:4]
    monkeypatch.setenv(PW_ENV, wrong)
    with pytest.raises(SqlSourceError) as info:
        read_sql(pg_source(pg))
    msg = str(info.value)
    assert "password authentication failed" in msg and safe_url(pg.url) in msg and PW_ENV in msg
    assert wrong not in msg and pg.password not in msg


def test_pg_bad_query_names_db_error(ray_session, pg_env: Pg):
    with pytest.raises(SqlSourceError) as info:
        read_sql(pg_source(pg_env, query="SELECT nope FROM items"))
    msg = str(info.value)
    assert 'column "nope" does not exist' in msg and "data.source.query" in msg and pg_env.url in msg
    assert pg_env.password not in msg
    with pytest.raises(SqlSourceError, match=r"shard_keys: \['ID'\] not among"):
        read_sql(pg_source(pg_env, shard_keys=["ID"], parallelism=2))  # result column names, exactly


def test_missing_password_env_is_spec_error(ray_session, pg: Pg, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RP_TEST_UNSET_PW", raising=False)
    source = SqlSource(type="sql", url=pg.url, query="SELECT 1", password_env="RP_TEST_UNSET_PW")
    with pytest.raises(SpecError, match=r"data\.source\.password_env.*RP_TEST_UNSET_PW"):
        read_sql(source)


# --- no database needed ---------------------------------------------------------------------
def test_factory_pickles_and_hides_password(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PW_ENV, "s3cret-value")
    factory = connection_factory(SqlSource(type="sql", url="postgresql://u@h:5432/d", query="SELECT 1",
                                           password_env=PW_ENV))
    assert "s3cret-value" not in repr(factory)
    assert pickle.loads(cloudpickle.dumps(factory)).url == "postgresql://u@h:5432/d"
    lite = connection_factory(SqlSource(type="sql", url="sqlite:////abs/x.db", query="SELECT 1"))
    assert pickle.loads(pickle.dumps(lite)).args == ("/abs/x.db",)


def test_safe_url_drops_passwords():
    assert safe_url("postgresql://u:pw@h:1/d?password=pw&sslmode=require") == "postgresql://u@h:1/d?sslmode=require"


def test_fingerprint_snapshot_or_nonce():
    base = {"type": "sql", "url": "postgresql://u@h/d", "query": "SELECT 1", "password_env": "X"}
    snap = SqlSource(**base, snapshot="2024-06-01")
    assert sql_fingerprint(snap, "run-1") == sql_fingerprint(snap, "run-2")
    assert sql_fingerprint(snap, "a") != sql_fingerprint(SqlSource(**base, snapshot="2024-06-02"), "a")
    plain = SqlSource(**base)
    assert sql_fingerprint(plain, "run-1") != sql_fingerprint(plain, "run-2")
    assert sql_fingerprint(plain, "n") != sql_fingerprint(SqlSource(**{**base, "query": "SELECT 2"}), "n")


# --- one state of the database per sharded read -------------------------------------
def test_pg_sharded_read_under_concurrent_inserts_sees_one_snapshot(ray_session, pg_env: Pg):
    """Rows are inserted (one committed transaction each, ids increasing) while four shards read.

    Every shard imports the snapshot the driver exported, so the rows read are exactly the
    table at one moment: ids 1..k with no gap and no repeat. Each shard running the query at
    its own moment would read a different state: later shards would hold rows whose earlier
    neighbours, hashed to an earlier shard, are missing.
    """
    import threading
    from contextlib import ExitStack

    with PostgresConnect(pg_env.url, pg_env.password)() as conn:
        conn.execute("DROP TABLE IF EXISTS stream")
        conn.execute("CREATE TABLE stream (id bigserial PRIMARY KEY, v integer NOT NULL)")
        conn.execute("INSERT INTO stream (v) SELECT g FROM generate_series(1, 5000) AS g")
    stop, inserted = threading.Event(), []

    def insert() -> None:
        with PostgresConnect(pg_env.url, pg_env.password)() as conn:
            conn.autocommit = True
            while not stop.is_set():
                inserted.append(conn.execute("INSERT INTO stream (v) VALUES (1) RETURNING id").fetchone()[0])

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    try:
        with ExitStack() as held:
            ds = read_sql(pg_source(pg_env, query="SELECT id, v FROM stream", shard_keys=["id"], parallelism=4), held)
            during = len(inserted)
            ds = ds.materialize()
            assert len(inserted) > during  # rows really were written while the shards read
    finally:
        stop.set()
        writer.join(10)
    assert read_tasks(ds)[0] == 4
    ids = sorted(ds.to_pandas()["id"].tolist())
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 5000  # one snapshot: a gap-free prefix


def test_sqlite_sharded_read_fails_when_the_file_changes_during_it(ray_session, sqlite_db: Path):
    from contextlib import ExitStack

    with pytest.raises(SqlSourceError, match=r"changed while its shards were read.*remove data.source.shard_keys"):
        with ExitStack() as held:
            ds = read_sql(sqlite_source(sqlite_db, shard_keys=["id"], parallelism=3), held)
            with sqlite3.connect(sqlite_db) as conn:  # a writer, while the shards read
                conn.execute("INSERT INTO t VALUES (5000, 'late', 1.0, 1)")
            conn.close()
            ds.materialize()
    with ExitStack() as held:  # unchanged: the same read passes
        assert read_sql(sqlite_source(sqlite_db, shard_keys=["id"], parallelism=3), held).count() == SQLITE_ROWS + 1
