"""Start a throwaway PostgreSQL server for tests (no Docker, no system service).

The server runs from Debian's binaries (``/usr/lib/postgresql/<v>/bin``) on 127.0.0.1 and
a free port, with password authentication (scram-sha-256) and its unix socket inside the
temp dir, so it never collides with another PostgreSQL on the host. PostgreSQL refuses to
run as root: as root every server command runs as the ``postgres`` OS user.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import free_port

USER = "rp_admin"
DATABASE = "raypipe_test"
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``initdb``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresMissing(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb). "
            "`.ci/run` installs them; locally run: "
            "apt-get update && apt-get install -y postgresql"
        )
    return Path(found[-1]).parent


def _as_server_user(tmp_dir: Path) -> list[str]:
    """Command prefix running as the ``postgres`` user when we are root; chowns ``tmp_dir``."""
    if os.geteuid() != 0:
        return []
    pg = pwd.getpwnam("postgres")
    os.chown(tmp_dir, pg.pw_uid, pg.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _start(bindir: Path, prefix: list[str], data: Path, log: Path, port: int) -> None:
    opts = f"-h 127.0.0.1 -p {port} -k {data.parent} {SERVER_OPTIONS}"
    _run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"])


def start_postgres(tmp_dir: str | Path) -> tuple[str, str, Callable[[], None]]:
    """Init and start a server in ``tmp_dir`` (a fresh folder the ``postgres`` user can reach).

    Returns ``(url, password, stop)``: the url (no password) of database ``raypipe_test``
    owned by superuser ``rp_admin``, that user's password, and a function that stops the
    server and deletes ``tmp_dir``.
    """
    bindir = pg_bindir()
    tmp = Path(tmp_dir)
    prefix = _as_server_user(tmp)
    password = secrets.token_urlsafe(16)
    pwfile = tmp / "pwfile"
    pwfile.write_text(password + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres", "postgres")
    data = tmp / "data"
    _run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                   f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync"])
    pwfile.unlink()
    for attempt in range(3):  # free_port() can race with another process: retry on a new port
        port = free_port()
        try:
            _start(bindir, prefix, data, tmp / "server.log", port)
            break
        except RuntimeError:
            if attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start:\n{_tail(tmp / 'server.log')}") from None

    def stop() -> None:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        _create_database(port, password)
    except Exception:
        stop()
        raise
    return f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}", password, stop


def _create_database(port: int, password: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no server log)"
