"""Unit tests for ``raypipe.store``: atomic writes, sealed artifacts, exclusive create."""
from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raypipe.errors import ArtifactError
from raypipe.store import MARKER, Store, create_exclusive, iter_file_digests


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_root_is_created(tmp_path: Path) -> None:
    store = Store(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert store.is_local
    assert store.root == str((tmp_path / "a" / "b").resolve())


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_bytes("deep/x/file.bin", b"first")
    assert (tmp_path / "deep" / "x" / "file.bin").read_bytes() == b"first"
    store.write_bytes("deep/x/file.bin", b"second, longer")
    assert store.read_bytes("deep/x/file.bin") == b"second, longer"
    store.write_json("deep/x/meta.json", {"b": 1, "a": [1, 2]})
    assert store.read_json("deep/x/meta.json") == {"a": [1, 2], "b": 1}
    assert all_files(tmp_path) == ["deep/x/file.bin", "deep/x/meta.json"]
    assert not any(".tmp-" in f for f in all_files(tmp_path))


def test_read_missing_file_is_artifact_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.read_bytes("nope.json")


def test_exists_and_delete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_bytes("d/f.txt", b"x")
    assert store.exists("d") and store.exists("d", "f.txt")
    store.delete("d", "f.txt")
    assert not store.exists("d", "f.txt") and store.exists("d")
    store.write_bytes("d/g.txt", b"x")
    store.delete("d")
    assert not store.exists("d")
    store.delete("never-there")  # no error


def make_artifact(store: Store, rel: str = "art") -> None:
    store.begin_artifact(rel)
    store.write_bytes(f"{rel}/a.bin", b"alpha")
    store.write_bytes(f"{rel}/sub/b.bin", b"beta" * 1000)
    store.complete_artifact(rel, {"kind": "test"})


def test_artifact_lifecycle(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.begin_artifact("art")
    assert Path(path).is_dir()
    assert not store.is_complete("art")
    with pytest.raises(ArtifactError, match="incomplete"):
        store.verify_artifact("art")
    store.write_bytes("art/a.bin", b"alpha")
    store.write_bytes("art/sub/b.bin", b"beta")
    files = store.complete_artifact("art", {"kind": "test"})
    assert sorted(files) == ["a.bin", "sub/b.bin"]
    assert store.is_complete("art")
    marker = store.verify_artifact("art")
    assert marker["kind"] == "test"
    assert marker["files"] == files
    assert MARKER not in marker["files"]


def test_flipped_byte_detected(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_artifact(store)
    f = tmp_path / "art" / "sub" / "b.bin"
    data = bytearray(f.read_bytes())
    data[1234] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sub/b.bin.*sha256"):
        store.verify_artifact("art")


def test_deleted_file_detected(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_artifact(store)
    (tmp_path / "art" / "a.bin").unlink()
    with pytest.raises(ArtifactError, match="'a.bin' is missing"):
        store.verify_artifact("art")


def test_deleted_marker_means_incomplete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_artifact(store)
    (tmp_path / "art" / MARKER).unlink()
    assert not store.is_complete("art")
    with pytest.raises(ArtifactError, match="incomplete"):
        store.verify_artifact("art")


def test_second_begin_on_complete_artifact_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_artifact(store)
    with pytest.raises(ArtifactError, match="already complete"):
        store.begin_artifact("art")
    # nothing was touched
    store.verify_artifact("art")
    assert (tmp_path / "art" / "a.bin").read_bytes() == b"alpha"


def test_begin_clears_leftovers_of_incomplete_artifact(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.begin_artifact("art")
    store.write_bytes("art/stale.bin", b"half written")
    store.write_bytes("art/deep/stale2.bin", b"x")
    (tmp_path / "art" / "crash.tmp-abc").write_bytes(b"partial")
    store.begin_artifact("art")
    assert (tmp_path / "art").is_dir()
    assert list((tmp_path / "art").iterdir()) == []
    store.write_bytes("art/new.bin", b"new")
    assert sorted(store.complete_artifact("art")) == ["new.bin"]


def test_create_exclusive_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert create_exclusive(store, "locks/run-1") is True
    assert (tmp_path / "locks" / "run-1").is_dir()
    assert create_exclusive(store, "locks/run-1") is False
    assert create_exclusive(store, "locks/run-2") is True


def test_create_exclusive_threads_race(tmp_path: Path) -> None:
    store = Store(tmp_path)
    n = 8
    barrier = threading.Barrier(n)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        won = create_exclusive(store, "versions/0007")
        with lock:
            results.append(won)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == n
    assert results.count(True) == 1


def test_listdir_and_walk_files_sorted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for rel in ["d/zeta.txt", "d/alpha.txt", "d/m/b.txt", "d/m/a.txt", "d/beta/c.txt"]:
        store.write_bytes(rel, rel.encode())
    assert store.listdir("d") == ["alpha.txt", "beta", "m", "zeta.txt"]
    assert store.walk_files("d") == ["alpha.txt", "beta/c.txt", "m/a.txt", "m/b.txt", "zeta.txt"]
    assert store.listdir("missing") == []
    assert store.walk_files("missing") == []


def test_sub_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sub = store.sub("models", "v1")
    assert (tmp_path / "models" / "v1").is_dir()
    assert sub.fs is store.fs and sub.is_local
    assert sub.root == store.path("models", "v1")
    sub.write_bytes("w.bin", b"w")
    assert store.read_bytes("models/v1/w.bin") == b"w"
    assert sub.full_uri("w.bin") == store.full_uri("models", "v1", "w.bin")
    nested = sub.sub("inner")
    nested.write_json("m.json", {"ok": True})
    assert store.read_json("models/v1/inner/m.json") == {"ok": True}
    assert store.walk_files("models") == ["v1/inner/m.json", "v1/w.bin"]


def test_sha256_and_iter_file_digests(tmp_path: Path) -> None:
    import hashlib

    store = Store(tmp_path)
    store.write_bytes("f/a.bin", b"abc")
    store.write_bytes("f/b/c.bin", b"")
    assert store.sha256("f", "a.bin") == hashlib.sha256(b"abc").hexdigest()
    digests = list(iter_file_digests(store.fs, store.path("f")))
    assert digests == [("a.bin", hashlib.sha256(b"abc").hexdigest()), ("b/c.bin", hashlib.sha256(b"").hexdigest())]
    assert list(iter_file_digests(store.fs, store.path("f", "a.bin"))) == [("a.bin", hashlib.sha256(b"abc").hexdigest())]
    with pytest.raises(FileNotFoundError):
        list(iter_file_digests(store.fs, store.path("nope")))


def test_file_uri_store(tmp_path: Path) -> None:
    """The same code through a URI (pyarrow's ``from_uri`` path, not the plain-path one)."""
    store = Store("file://" + str(tmp_path / "uri"))
    assert isinstance(store.fs, pafs.LocalFileSystem)
    make_artifact(store)
    assert store.verify_artifact("art")["kind"] == "test"
    assert (tmp_path / "uri" / "art" / "a.bin").read_bytes() == b"alpha"
    assert store.walk_files("art") == [MARKER, "a.bin", "sub/b.bin"]
    assert create_exclusive(store, "x") is True and create_exclusive(store, "x") is False
    (tmp_path / "uri" / "art" / "a.bin").write_bytes(b"alphA")
    with pytest.raises(ArtifactError):
        store.verify_artifact("art")


def test_non_local_filesystem_branch(tmp_path: Path) -> None:
    """A filesystem that is not LocalFileSystem (object-store code path) over a local dir."""
    base = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store = object.__new__(Store)
    store.fs, store.root, store.uri, store.is_local = base, "root", "mem://root", False
    store.fs.create_dir("root", recursive=True)
    make_artifact(store)
    store.verify_artifact("art")
    assert store.full_uri("art", "a.bin") == "mem://root/art/a.bin"
    assert create_exclusive(store, "lock") is True and create_exclusive(store, "lock") is False
    assert not any(".tmp-" in f for f in all_files(tmp_path))


def test_writes_are_fsynced_before_they_are_published(tmp_path, monkeypatch):
    """A visible file or a complete marker survives a power loss: data, then rename, then the folder, then the marker."""
    import os

    import raypipe.store as store_module

    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(store_module.os, "fsync",
                        lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd))
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: events.append(("replace", str(b))) or replace(a, b))
    s = Store(str(tmp_path / "root"))
    s.write_bytes("art/a.bin", b"x")
    target = str(tmp_path / "root" / "art" / "a.bin")
    kinds = [(k, p.split(".tmp-")[0] if ".tmp-" in p else p) for k, p in events]
    assert kinds == [("fsync", target), ("replace", target), ("fsync", str(tmp_path / "root" / "art"))]
    (tmp_path / "root" / "art" / "from_a_task.parquet").write_bytes(b"rows")  # as Ray tasks write: no fsync
    events.clear()
    s.complete_artifact("art")
    marker = str(tmp_path / "root" / "art" / MARKER)
    synced = [p for k, p in events if k == "fsync"]
    assert str(tmp_path / "root" / "art" / "from_a_task.parquet") in synced
    assert events.index(("replace", marker)) > max(i for i, e in enumerate(events) if e[1].endswith(".parquet"))
