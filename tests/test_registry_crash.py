"""Crash consistency of the registry: the registering process is SIGKILLed at every write.

Each write of a registration (owner file, every model and metadata file, the manifest,
the status, the alias, the audit entry) is a kill point; the kill lands while that
file is half written. Afterwards readers must see only complete versions (the old
champion or the new one, both loadable), and ``recover`` (what the next run calls)
must either finish the version or leave a tombstone whose number is never reused.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raypipe.predictor import Predictor
from raypipe.registry import Registry
from tests.test_registry import _version_files

REPO = Path(__file__).resolve().parents[1]

# Runs in a child process: count Store.write_bytes calls; on call K write half the bytes
# to a temporary file next to the target (as a real write would) and SIGKILL ourselves.
CHILD = """
import os, signal, sys
from raypipe.registry import Registry
from raypipe.store import Store
from tests.test_registry import _version_files

root, kill_at = sys.argv[1], int(sys.argv[2])
calls = 0
real = Store.write_bytes

def write_bytes(self, rel, data):
    global calls
    calls += 1
    if calls == kill_at:
        final = self.path(rel)
        self.fs.create_dir(os.path.dirname(final), recursive=True)
        with self.fs.open_output_stream(final + ".tmp-killed") as f:
            f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, rel, data)

Store.write_bytes = write_bytes
Registry(root, "p").publish(_version_files(1), passed=True, promote_to="champion", reason="candidate")
print("WRITES", calls)
"""


def _child(root: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(root), str(kill_at)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A registry whose champion is version 1."""
    root = tmp_path_factory.mktemp("crash") / "base"
    assert Registry(str(root), "p").publish(_version_files(0), passed=True, promote_to="champion") == 1
    return root


def test_kill_at_every_write_leaves_only_complete_versions(baseline, tmp_path):
    dry = _child(_copy(baseline, tmp_path / "dry"), 10**9)
    assert dry.returncode == 0, dry.stderr
    writes = int(dry.stdout.split()[-1])
    assert writes >= 10  # owner, 6 files, manifest, status, alias, audit, final status

    roots = [_copy(baseline, tmp_path / f"k{k}") for k in range(1, writes + 1)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(_child, roots, range(1, writes + 1)))
    outcomes = []
    for k, (root, proc) in enumerate(zip(roots, procs), start=1):
        assert proc.returncode == -9, f"kill point {k}: child was not killed ({proc.returncode}, {proc.stderr[-500:]})"
        reg = Registry(str(root), "p")
        # What a reader sees right after the crash: complete versions only, champion loadable.
        _assert_readers_see_complete_versions(reg, k)
        claimed, sealed = (root / "registry/p/versions/000002").exists(), 2 in reg.versions()
        # The next run: recover, then everything is final and a taken number is never reused.
        done = dict(reg.recover())
        if sealed:
            assert done[2] == "finalized as ready" and reg.status(2) == "ready" and reg.alias("champion") == 2, f"kill point {k}"
        elif claimed:
            assert done[2] == "tombstoned" and reg.status(2) == "failed" and reg.alias("champion") == 1, f"kill point {k}"
            assert not any(p.is_file() and p.name != "_STATUS.json" for p in (root / "registry/p/versions/000002").rglob("*"))
        else:  # killed before the number was taken: only a temporary claim folder, now removed
            assert done == {} and reg.alias("champion") == 1, f"kill point {k}"
        assert [p.name for p in (root / "registry/p/versions").iterdir() if p.name.startswith(".")] == []
        _assert_readers_see_complete_versions(reg, k)
        assert reg.recover() == []  # nothing left to do
        assert reg.register({"a.txt": b"next"}, status="ready") == (3 if claimed else 2)
        outcomes.append((claimed, sealed))
    # Every phase was hit: before the claim, between claim and manifest, after the manifest.
    assert outcomes[0] == (False, False) and (True, False) in outcomes and outcomes[-1] == (True, True)


def _assert_readers_see_complete_versions(reg: Registry, k: int) -> None:
    champion = reg.alias("champion")
    assert champion in (1, 2), f"kill point {k}: champion is {champion}"
    out = Predictor.from_version(reg.version_store(champion)).predict_records([{"x": 2.0, "c": "a"}])
    assert out[0]["prediction"] in (0, 1)
    for v in reg.versions():
        reg.version_store(v).verify_artifact("")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
