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
from pathlib import Path

import pytest

from raypipe.model.predictor import Predictor
from raypipe.register.stage import load_check
from raypipe.registry import Registry
from tests.test_registry import _version_files

REPO = Path(__file__).resolve().parents[1]

# Runs in a child process that imports raypipe once, then forks one grandchild per kill point
# (a fresh interpreter per point cost ~4 s of imports each). Each grandchild counts
# Store.write_bytes calls; on call K it writes half the bytes to a temporary file next to the
# target (as a real write would) and SIGKILLs itself. K = 0: never killed, print the count.
CHILD = """
import json, os, signal, sys
from raypipe.register.stage import load_check
from raypipe.registry import Registry
from raypipe.store import Store
from tests.test_registry import _version_files

files = _version_files(1)
real = Store.write_bytes

def publish(root, kill_at):
    calls = 0

    def write_bytes(self, rel, data):
        nonlocal calls
        calls += 1
        if calls == kill_at:
            final = self.path(rel)
            self.fs.create_dir(os.path.dirname(final), recursive=True)
            with self.fs.open_output_stream(final + ".tmp-killed") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, rel, data)

    Store.write_bytes = write_bytes
    Registry(root, "p", verify=load_check).publish(files, passed=True, promote_to="champion", reason="candidate")
    return calls

outcome = {}
for arg in sys.argv[1:]:
    root, kill_at = arg.rsplit(":", 1)
    if int(kill_at) == 0:
        outcome[arg] = {"writes": publish(root, 0)}
        continue
    pid = os.fork()
    if pid == 0:
        publish(root, int(kill_at))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    outcome[arg] = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
print(json.dumps(outcome))
"""


def _children(runs: list[tuple[Path, int]]) -> dict[str, dict]:
    """Run ``publish`` once per (registry root, kill point) in forks of one child; their outcomes."""
    import json

    args = [f"{root}:{k}" for root, k in runs]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(a.rsplit(":", 1)[1]): outcome[a] for a in args}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A registry whose champion is version 1."""
    root = tmp_path_factory.mktemp("crash") / "base"
    assert Registry(str(root), "p", verify=load_check).publish(_version_files(0), passed=True, promote_to="champion") == 1
    return root


def test_kill_at_every_write_leaves_only_complete_versions(baseline, tmp_path):
    writes = _children([(_copy(baseline, tmp_path / "dry"), 0)])[0]["writes"]
    assert writes >= 10  # owner, 6 files, manifest, status, alias, audit, final status

    roots = [_copy(baseline, tmp_path / f"k{k}") for k in range(1, writes + 1)]
    killed = _children(list(zip(roots, range(1, writes + 1))))
    outcomes = []
    for k, root in enumerate(roots, start=1):
        assert killed[k] == {"signal": 9, "exit": None}, f"kill point {k}: child was not killed ({killed[k]})"
        reg = Registry(str(root), "p", verify=load_check)
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
