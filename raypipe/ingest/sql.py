"""SQL sources (SQLite, PostgreSQL) -> ``ray.data.Dataset``, read in parallel by Ray Data.

Without ``shard_keys`` the query runs in ONE Ray read task. With ``shard_keys`` Ray's
``read_sql`` runs it in N read tasks, task ``i`` keeping the rows whose hashed keys fall
in shard ``i``; rows go from the database straight to the tasks, never through the driver::

    SELECT * FROM (<query>) AS T WHERE MOD(ABS(<hash_fn>(<keys>)), N) = i

Ray's default hash (``MD5``) works on neither database: PostgreSQL's ``md5()`` takes
text and returns hex text (``ABS(text)`` fails), and SQLite has no ``MD5`` (nor ``CONCAT``
before 3.44). Ray then silently falls back to one task, so this module passes its own
hash per dialect (see :func:`shard_sql`) and checks it before Ray does.

Every task runs the whole query and filters it, so the query must be deterministic (no
``LIMIT`` without ``ORDER BY``, no ``random()``) and the rows' order is not the query's.

The shards must also see ONE state of the database, or rows written during the read are
lost or read twice. On PostgreSQL the driver opens a REPEATABLE READ transaction, exports
its snapshot (``pg_export_snapshot``) and keeps it open while the dataset is read; every
shard's connection imports it (``SET TRANSACTION SNAPSHOT``). SQLite has no snapshot to
share across connections: a sharded read checks that the file did not change while it
ran, and fails otherwise.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from raypipe.errors import RaypipeError, SpecError, transient
from raypipe.spec import SqlSource

if TYPE_CHECKING:
    import ray.data

SQLITE_SHARD_FN = "rp_shard_hash"  # registered on every SQLite connection this module opens
PG_SHARD_FN = "hashtextextended"  # built in since PostgreSQL 11: (text, seed) -> bigint
CONNECT_TIMEOUT_S = 10
log = logging.getLogger(__name__)


class SqlSourceError(RaypipeError, RuntimeError):
    """The database could not be reached or the query failed. Exit code 1."""

    exit_code = 1


# --- urls -----------------------------------------------------------------------------
def dialect(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    scheme = url.split("://", 1)[0]
    return "sqlite" if scheme == "sqlite" else "postgresql"


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:////abs/path.db`` (``sqlite:///rel.db`` gives ``rel.db``)."""
    path = url.removeprefix("sqlite://").removeprefix("/")
    if not path or path == ":memory:":
        raise SpecError(f"data.source.url: {url!r} names no file; write sqlite:////absolute/path/to.db")
    return path


def safe_url(url: str) -> str:
    """``url`` without any password (``user:pw@`` or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --- connections ----------------------------------------------------------------------
def _shard_hash(*values: Any) -> int:
    """SQLite's shard hash: a stable 52-bit integer of the key values.

    52 bits because SQLite's ``MOD`` computes in doubles: a larger hash would lose its low
    bits and ``MOD(h, 4)`` would be 0 for almost every row.
    """
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**52 - 1)


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """Open an existing SQLite file, with the shard hash (and ``MOD`` if missing) registered."""
    if not os.path.isfile(path):
        raise SqlSourceError(f"SQLite database {path!r} does not exist; fix data.source.url (sqlite:////abs/path.db)")
    try:
        conn = sqlite3.connect(path, uri=False)
    except sqlite3.Error as e:
        raise SqlSourceError(f"cannot open SQLite database {path!r}: {e}") from None
    conn.create_function(SQLITE_SHARD_FN, -1, _shard_hash, deterministic=True)
    try:
        conn.execute("SELECT MOD(3, 2)")
    except sqlite3.OperationalError:  # built without SQLITE_ENABLE_MATH_FUNCTIONS
        conn.create_function("MOD", 2, lambda a, b: None if a is None or b is None else a % b, deterministic=True)
    return conn


class PostgresConnect:
    """A picklable PostgreSQL connection factory (psycopg 3) for Ray's read tasks.

    The password travels as a keyword argument, never inside a conninfo string, and
    ``repr`` hides it. ``numeric`` columns load as ``float`` (float64 in Arrow).
    """

    def __init__(self, url: str, password: str | None, password_env: str | None = None,
                 snapshot: str | None = None) -> None:
        self.url = url
        self.password_env = password_env
        self._password = password
        self.snapshot = snapshot  # an exported snapshot every connection's transaction imports

    def __repr__(self) -> str:
        return f"PostgresConnect({safe_url(self.url)!r}, password={'***' if self._password else None})"

    def __call__(self) -> Any:
        import psycopg
        from psycopg.types.numeric import FloatLoader

        kwargs: dict[str, Any] = {}
        if self._password is not None:
            kwargs["password"] = self._password
        if "connect_timeout" not in self.url:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except psycopg.Error as e:
            error = SqlSourceError(
                f"cannot connect to {safe_url(self.url)}: {_db_text(e, self._password)}\n"
                f"  fix: check host, port, database and user in data.source.url"
                + (f", and that ${self.password_env} holds that user's password" if self.password_env else
                   ", and set data.source.password_env if the server wants a password")
            )
            # No answer from a server (no SQLSTATE), a connection exception (class 08), a server starting up or
            # out of connections: may pass if tried again. A refused login or an unknown database will not.
            state = getattr(e, "sqlstate", None) or ""
            raise (transient(error) if state == "" or state.startswith("08") or state in ("57P03", "53300")
                   else error) from None
        conn.adapters.register_loader("numeric", FloatLoader)
        if self.snapshot:
            _import_snapshot(conn, self.snapshot, safe_url(self.url))
        return conn


_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


def _import_snapshot(conn: Any, snapshot: str, where: str) -> None:
    """Make ``conn``'s transaction see exactly the exported ``snapshot`` (REPEATABLE READ)."""
    import psycopg
    from psycopg import sql

    if not _SNAPSHOT_ID.match(snapshot):
        raise SqlSourceError(f"not a PostgreSQL snapshot id: {snapshot!r}")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    except psycopg.Error as e:
        conn.close()
        raise SqlSourceError(f"a shard of the read of {where} could not join the read's snapshot: {_db_text(e, None)}; "
                             "the transaction holding it ended early (a server restart, idle_in_transaction_"
                             "session_timeout): run again") from None


class SharedSnapshot:
    """A REPEATABLE READ transaction on PostgreSQL whose snapshot the shards import; open until closed."""

    def __init__(self, factory: PostgresConnect) -> None:
        import psycopg

        self.conn = factory()
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.id: str = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]

    def close(self) -> None:
        try:
            self.conn.rollback()  # read only: nothing to commit
        finally:
            self.conn.close()


class SqliteUnchanged:
    """A sharded SQLite read's guard: the file (and its WAL) must be the same after the read as before."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.before = self._state()

    def _state(self) -> tuple[tuple[int, int] | None, ...]:
        out = []
        for p in (self.path, self.path + "-wal"):
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def check(self) -> None:
        if self._state() != self.before:
            raise SqlSourceError(
                f"SQLite database {self.path!r} changed while its shards were read (data.source.shard_keys): rows "
                "written meanwhile may be missing or read twice. Run again once writes stop, or remove "
                "data.source.shard_keys to read it in one transaction")


def _password(source: SqlSource) -> str | None:
    if source.password_env is None:
        return None
    try:
        return os.environ[source.password_env]
    except KeyError:
        raise SpecError(
            f"data.source.password_env: environment variable {source.password_env!r} is not set; "
            f"export it with the database password (export {source.password_env}=...)"
        ) from None


def connection_factory(source: SqlSource) -> Callable[[], Any]:
    """A picklable zero-argument function returning a DB-API connection to ``source.url``."""
    if dialect(source.url) == "sqlite":
        return functools.partial(_connect_sqlite, sqlite_path(source.url))
    return PostgresConnect(source.url, _password(source), source.password_env)


# --- reading --------------------------------------------------------------------------
def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def shard_sql(url: str, keys: list[str]) -> tuple[str, str]:
    """``(shard_hash_fn, shard key expression)`` for Ray's ``read_sql`` on this database.

    Both give an integer from ALL the keys (NULLs included), and Ray wraps them as
    ``MOD(ABS(fn(expr)), N)`` (on PostgreSQL ``ABS`` fails only for a hash of exactly
    -2**63: odds 2**-64 per distinct key). The expression is passed as Ray's single shard key
    so that Ray does not wrap several keys in ``CONCAT`` (absent from SQLite < 3.44).
    """
    cols = ", ".join(_quote(k) for k in keys)
    if dialect(url) == "sqlite":
        return SQLITE_SHARD_FN, cols
    return PG_SHARD_FN, f"CONCAT_WS('|', {cols}), 0"


def _clean_query(query: str) -> str:
    """The query without trailing ``;``: Ray wraps it as a subquery."""
    return query.strip().rstrip(";").rstrip()


def _db_text(error: BaseException, password: str | None) -> str:
    """The database's error text, one line, the password (if any) masked."""
    primary = getattr(getattr(error, "diag", None), "message_primary", None)  # psycopg: no "LINE 1: ..."
    text = " ".join((primary or str(error)).split()) or type(error).__name__
    return text.replace(password, "***") if password else text


def _probe(source: SqlSource, factory: Callable[[], Any], sql: str, what: str, hint: str) -> list[str]:
    """Run ``sql`` (a ``LIMIT 0`` probe) and return its column names; errors become SqlSourceError."""
    conn = factory()
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        cursor.fetchall()
        return [d[0] for d in cursor.description or ()]
    except Exception as e:  # noqa: BLE001 - each DB-API driver has its own error classes
        raise SqlSourceError(
            f"{what} failed on {safe_url(source.url)}: {_db_text(e, getattr(factory, '_password', None))}\n"
            f"  fix: {hint}"
        ) from None
    finally:
        conn.close()


def check_source(source: SqlSource, factory: Callable[[], Any], sql: str, shard: tuple[str, str] | None) -> None:
    """Fail fast on the driver: connect, then plan the query (and the shard filter) with ``LIMIT 0``.

    Shard keys must be columns of the query's result: SQLite reads an unknown ``"name"``
    as a string literal, which would put every row in one shard.
    """
    columns = _probe(source, factory, f"SELECT * FROM ({sql}) AS rp_probe LIMIT 0", "data.source.query",
                     "correct the SQL (try it in psql or sqlite3 first)")
    if not shard:
        return
    unknown = [k for k in source.shard_keys if k not in columns]
    if unknown:
        raise SqlSourceError(
            f"data.source.shard_keys: {unknown} not among the query's result columns {columns} "
            f"on {safe_url(source.url)}; name result columns exactly as the query returns them"
        )
    fn, expr = shard
    _probe(source, factory, f"SELECT * FROM ({sql}) AS rp_probe WHERE MOD(ABS({fn}({expr})), 2) = 0 LIMIT 0",
           "sharding by data.source.shard_keys", f"Ray's shard filter MOD(ABS({fn}(...)), N) must run on this database")


def read_sql(source: SqlSource, stack: ExitStack | None = None) -> ray.data.Dataset:
    """Open ``source`` as a lazy dataset: one read task, or ``parallelism`` with ``shard_keys``.

    A sharded read holds a consistent view (see the module's docstring) for as long as
    ``stack`` is open: the caller closes it once the dataset is consumed (a failed SQLite
    check raises then). Without a ``stack`` the dataset is materialised here, inside it.

    Raises:
        SpecError: the url or ``password_env`` is unusable.
        SqlSourceError: the database cannot be reached, or the query (or sharding) fails.
    """
    import ray.data

    factory = connection_factory(source)
    sql = _clean_query(source.query)
    shard = shard_sql(source.url, source.shard_keys) if source.shard_keys else None
    check_source(source, factory, sql, shard)
    if shard is None:
        return ray.data.read_sql(sql, factory)
    if stack is None:
        with ExitStack() as own:
            return read_sql(source, own).materialize()
    fn, expr = shard
    if isinstance(factory, PostgresConnect):
        snapshot = SharedSnapshot(factory)
        stack.callback(snapshot.close)
        factory = PostgresConnect(factory.url, factory._password, factory.password_env, snapshot=snapshot.id)
    else:
        stack.callback(SqliteUnchanged(sqlite_path(source.url)).check)
    # `parallelism=` is deprecated in Ray; left to Ray it starts up to 200 tasks, each running the query.
    return ray.data.read_sql(sql, factory, shard_keys=[expr], shard_hash_fn=fn, override_num_blocks=source.parallelism)


def sql_fingerprint(source: SqlSource, nonce: str) -> str:
    """sha256 of the source config (no secrets) and its ``snapshot``, else ``nonce``.

    The database is not read: without a snapshot label the data cannot be known to be
    unchanged, so pass a fresh ``nonce`` per run and every run re-reads it.
    """
    config = source.model_dump(mode="json", exclude={"snapshot"})
    config["url"] = safe_url(source.url)
    state = {"snapshot": source.snapshot} if source.snapshot else {"nonce": nonce}
    payload = json.dumps({"source": config, **state}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
