"""The file-based registry: unique version numbers under concurrency, aliases, rollback,
audit log, and integrity checks before any model is loaded."""
from __future__ import annotations

import json
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raypipe.errors import ArtifactError, RegistryError
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.model.predictor import Predictor
from raypipe.register.stage import load_check
from raypipe.registry import Registry

CANARY = Path("/tmp/raypipe-registry-canary")


def _version_files(seed: int = 0) -> dict[str, bytes]:
    """A real, loadable version: fitted features, a skops model, schema, metrics, lineage."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.normal(size=200), "c": rng.choice(["a", "b"], 200)})
    y = (df["x"] > 0).astype(int)
    fp = FeaturePipeline(["x"], ["c"]).fit(df)
    est = LogisticRegression().fit(fp.transform(df), y)
    schema = {"columns": {"x": {"type": "number", "nullable": False}, "c": {"type": "string", "nullable": True},
                          "y": {"type": "integer"}},
              "target": {"name": "y", "type": "integer", "task": "classification", "classes": ["0", "1"]},
              "id_columns": [], "features": {"numeric": ["x"], "categorical": ["c"]}}
    meta = {"format": "raypipe.model/1", "kind": "sklearn:sklearn.linear_model:LogisticRegression",
            "task": "classification", "n_outputs": 2}
    return {
        "features.json": json.dumps(fp.to_dict()).encode(), "schema.json": json.dumps(schema).encode(),
        "metrics.json": json.dumps({"metrics": {"f1": 0.9}}).encode(), "lineage.json": b"{}",
        "model/model.json": json.dumps(meta).encode(), "model/model.skops": sio.dumps(est),
    }


def _register(root: str) -> int:
    return Registry(root, "p").register({"a.txt": b"x"}, status="ready")


def test_concurrent_registrations_get_unique_monotonic_numbers(tmp_path):
    with ProcessPoolExecutor(max_workers=8) as pool:
        numbers = list(pool.map(_register, [str(tmp_path)] * 8))
    assert sorted(numbers) == list(range(1, 9))
    assert Registry(str(tmp_path), "p").versions() == list(range(1, 9))
    assert Registry(str(tmp_path), "p").register({"a.txt": b"y"}, status="ready") == 9


def test_aliases_promote_rollback_and_audit_log(tmp_path):
    reg = Registry(str(tmp_path), "p")
    v1 = reg.register({"a.txt": b"1"}, status="ready")
    v2 = reg.register({"a.txt": b"2"}, status="ready")
    v3 = reg.register({"a.txt": b"3"}, status="rejected")
    reg.set_alias("champion", v1, reason="first")
    reg.set_alias("champion", v2, reason="better f1")
    with pytest.raises(RegistryError, match="only 'ready' versions"):
        reg.set_alias("champion", v3, reason="should fail")
    assert reg.rollback("champion", reason="v2 misbehaves in production") == v1
    assert reg.alias("champion") == v1
    log = reg.audit_log()
    assert [(e["action"], e["version"], e["previous"]) for e in log] == [
        ("promote", v1, None), ("promote", v2, v1), ("rollback", v1, v2)]
    assert log[-1]["reason"] == "v2 misbehaves in production" and log[-1]["user"] and log[-1]["at"]
    with pytest.raises(RegistryError, match="no earlier version"):
        Registry(str(tmp_path), "other").rollback("champion", reason="nothing to roll back")


def test_incomplete_version_is_invisible(tmp_path):
    reg = Registry(str(tmp_path), "p")
    (tmp_path / "registry" / "p" / "versions" / "000001").mkdir(parents=True)  # a crashed registration
    assert reg.versions() == []
    with pytest.raises(RegistryError, match="version 1 does not exist"):
        reg.version_store(1)
    assert reg.register({"a.txt": b"x"}, status="ready") == 2


def test_version_loads_and_predicts(tmp_path):
    reg = Registry(str(tmp_path), "p")
    v = reg.register(_version_files(), status="ready", meta={"threshold": 0.5})
    out = Predictor.from_version(reg.version_store(v)).predict_records([{"x": 2.0, "c": "a"}, {"x": -2.0, "c": None}])
    assert [o["prediction"] for o in out] == [1, 0]


def test_one_flipped_byte_in_the_model_is_detected_before_loading(tmp_path):
    reg = Registry(str(tmp_path), "p")
    v = reg.register(_version_files(), status="ready")
    path = tmp_path / "registry" / "p" / "versions" / f"{v:06d}" / "model" / "model.skops"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model/model.skops.*sha256"):
        Predictor.from_version(reg.version_store(v))


class _Evil:
    def __reduce__(self):
        return (CANARY.write_text, ("pwned",))


def test_planted_pickle_is_refused_and_never_executed(tmp_path):
    CANARY.unlink(missing_ok=True)
    reg = Registry(str(tmp_path), "p")
    v = reg.register(_version_files(), status="ready")
    model = tmp_path / "registry" / "p" / "versions" / f"{v:06d}" / "model" / "model.skops"
    model.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ArtifactError):
        Predictor.from_version(reg.version_store(v))
    assert not CANARY.exists()


def test_cli_promote_and_rollback(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "pipeline.yaml"
    spec.write_text("name: p\nstorage: store\ndata:\n  source: {type: builtin}\n  target: is_fraud\n")
    reg = Registry(str(tmp_path / "store"), "p")
    v1, v2 = (reg.register({"a.txt": bytes([i])}, status="ready") for i in range(2))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raypipe", "registry", *args], capture_output=True, text=True)

    assert cli("promote", str(spec), str(v1)).returncode == 0
    assert cli("promote", str(spec), str(v2), "--reason", "new model").returncode == 0
    assert reg.alias("champion") == v2
    done = cli("rollback", str(spec), "--reason", "latency regression")
    assert done.returncode == 0 and f"rolled back to version {v1}" in done.stderr
    assert reg.alias("champion") == v1 and reg.audit_log()[-1]["reason"] == "latency regression"
    assert cli("promote", str(spec), "99").returncode == 2  # RegistryError: no such version


def test_publish_verifies_the_version_then_promotes_it(tmp_path):
    reg = Registry(str(tmp_path), "p", verify=load_check)
    v = reg.publish(_version_files(), passed=True, promote_to="champion", meta={"threshold": 0.5}, reason="gate passed")
    state = reg.state(v)
    assert state["status"] == "ready" and state["finalized"]
    assert [h["status"] for h in state["history"]][0] == "ready"
    assert "model loaded" in state["history"][0]["why"]
    assert reg.alias("champion") == v and reg.audit_log()[-1]["reason"] == "gate passed"


def test_publish_rejected_and_unloadable_versions_never_get_an_alias(tmp_path):
    reg = Registry(str(tmp_path), "p", verify=load_check)
    champion = reg.publish(_version_files(), passed=True, promote_to="champion")
    rejected = reg.publish(_version_files(1), passed=False, promote_to="champion")
    broken_files = {**_version_files(2), "model/model.json": json.dumps({"format": "raypipe.model/1", "kind": "nope"}).encode()}
    broken = reg.publish(broken_files, passed=True, promote_to="champion")
    assert (reg.status(rejected), reg.status(broken)) == ("rejected", "failed")
    assert "does not load back" in reg.state(broken)["history"][0]["why"]
    assert reg.alias("champion") == champion
    assert [e["version"] for e in reg.audit_log()] == [champion]


def test_challenger_alias_leaves_the_champion_alone(tmp_path):
    reg = Registry(str(tmp_path), "p")
    champion = reg.publish(_version_files(), passed=True, promote_to="champion")
    challenger = reg.publish(_version_files(1), passed=True, promote_to="challenger")
    assert reg.aliases() == {"champion": champion, "challenger": challenger}
    assert reg.info(challenger)["aliases"] == ["challenger"]
    reg.set_alias("champion", challenger, reason="canary looked good")
    assert reg.alias("champion") == challenger
    rejected = reg.register({"a.txt": b"x"}, status="rejected")
    with pytest.raises(RegistryError, match="only 'ready' versions can be challenger"):
        reg.set_alias("challenger", rejected, reason="refused")


def test_recover_leaves_versions_of_live_processes_alone(tmp_path):
    reg = Registry(str(tmp_path), "p")
    v = reg.write_version(_version_files())  # sealed and pending, owned by this (live) process
    assert reg.status(v) == "pending" and reg.recover() == []
    assert reg.finalize(v) == "ready" and reg.finalize(v) == "ready"  # idempotent
    assert reg.alias("champion") is None  # no promote_to in its meta


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 65, "champion\n"])
def test_alias_names_that_are_not_plain_file_names_are_refused(tmp_path, name):
    reg = Registry(str(tmp_path / "store"), "p")
    v = reg.register({"a.txt": b"x"}, status="ready")
    with pytest.raises(RegistryError, match="not a valid alias name"):
        reg.set_alias(name, v, reason="test")
    with pytest.raises(RegistryError, match="not a valid alias name"):
        reg.rollback(name, reason="test")
    assert [p.name for p in (tmp_path / "store").rglob("*.json") if "aliases" in p.parts or p.parent.name == "p"] == []


def test_cli_promote_with_a_path_as_alias_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "pipeline.yaml"
    spec.write_text("name: p\nstorage: store\ndata:\n  source: {type: builtin}\n  target: is_fraud\n")
    v = Registry(str(tmp_path / "store"), "p").register({"a.txt": b"x"}, status="ready")
    done = subprocess.run([sys.executable, "-m", "raypipe", "registry", "promote", str(spec), str(v), "--alias", "../../x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a valid alias name" in done.stderr
    assert not any(p.name == "x.json" for p in tmp_path.rglob("*.json"))


def planted_factory_version(tmp_path: Path, reg: Registry, source_version: int | None = None) -> tuple[int, Path]:
    """A version whose model.json (re-sealed, as a storage writer could) names ``torch.hub.load`` on a local
    folder whose hubconf writes a canary file: loading it would run that code. Returns (version, canary)."""
    from raypipe.store import MARKER, Store

    canary, hub = tmp_path / "canary.txt", tmp_path / "hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(f"def canary(**kw):\n    open({str(canary)!r}, 'w').write('ran')\n"
                                    "    import torch\n    return torch.nn.Linear(1, 1)\n")
    if source_version is None:
        files = _version_files()
    else:
        vs = reg.version_store(source_version)
        files = {f: vs.read_bytes(f) for f in vs.walk_files() if not f.startswith("_")}
    meta = json.loads(files["model/model.json"])
    meta.update(kind="torch:torch.hub:load", input_dim=1, layout=[],
                params={"repo_or_dir": str(hub), "model": "canary", "source": "local"})
    files["model/model.json"] = json.dumps(meta).encode()
    from safetensors.torch import save
    import torch

    files["model/model.safetensors"] = save({"weight": torch.zeros(1, 1)})
    v = reg.register(files, status="ready", meta={"threshold": 0.5})
    vs = Store(reg.version_store(v).full_uri())
    marker = vs.read_json(MARKER)
    vs.complete_artifact("", {k: val for k, val in marker.items() if k != "files"})  # re-sealed: the sha256s match
    return v, canary


def test_a_stored_model_never_chooses_the_code_that_builds_it(tmp_path):
    reg = Registry(str(tmp_path / "store"), "p")
    v, canary = planted_factory_version(tmp_path, reg)
    reg.version_store(v).verify_artifact("")  # the manifest checks out: integrity is not authorship
    with pytest.raises(ArtifactError, match="torch:torch.hub:load.*does not trust"):
        Predictor.from_version(reg.version_store(v))
    assert not canary.exists()
    with pytest.raises(ArtifactError, match="does not trust"):  # the register stage's check refuses it the same way
        load_check(reg.version_store(v), v)
    assert not canary.exists()
    # The same version with the deployer's allow-list does run the factory: the refusal above is what stopped it.
    with pytest.raises(Exception):
        Predictor.from_version(reg.version_store(v), v, trusted=("torch:torch.hub:load",))
    assert canary.read_text() == "ran"


def test_trusted_factories_come_from_the_spec_and_the_deployer_environment(monkeypatch):
    from types import SimpleNamespace

    from raypipe.model.formats import TRUSTED_FACTORIES_ENV, trusted_factories

    monkeypatch.delenv(TRUSTED_FACTORIES_ENV, raising=False)
    assert trusted_factories(SimpleNamespace(model=SimpleNamespace(kind="torch.mlp"))) == ()
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, " torch:a:b ,torch:c:d,")
    spec = SimpleNamespace(model=SimpleNamespace(kind="torch:my.models:net"))
    assert trusted_factories(spec) == ("torch:a:b", "torch:c:d", "torch:my.models:net")


def _re_seal(vs, edit) -> None:
    """What a storage writer can do: change files, then rewrite the sha256 manifest to match."""
    from raypipe.store import MARKER

    marker = vs.read_json(MARKER)
    edit(vs)
    vs.complete_artifact("", {k: val for k, val in marker.items() if k != "files"})


def _raise_threshold(vs) -> None:
    from raypipe.store import MARKER

    marker = vs.read_json(MARKER)
    marker["meta"]["threshold"] = 0.99  # every case flagged negative: a quiet sabotage
    vs.write_json(MARKER, marker)


def test_signed_versions_refuse_a_re_sealed_forgery(tmp_path, monkeypatch):
    monkeypatch.setenv("RP_SIGNING_KEY", "k3y-only-the-deployer-holds")
    reg = Registry(str(tmp_path / "store"), "p", signing_key_env="RP_SIGNING_KEY")
    v = reg.register(_version_files(), meta={"threshold": 0.5})
    vs = reg.version_store(v)
    assert vs.exists("_SIGNATURE.json") and reg.check_version(v)
    _re_seal(vs, _raise_threshold)
    vs.verify_artifact("")  # the sha256 manifest alone is fooled: every file matches it
    assert Registry(str(tmp_path / "store"), "p").check_version(v)  # and so is an unsigned registry
    with pytest.raises(ArtifactError, match="does not match its signature"):
        reg.check_version(v)
    monkeypatch.setenv("RP_SIGNING_KEY", "another-key")
    w = Registry(str(tmp_path / "store"), "p").register(_version_files(), meta={"threshold": 0.5})  # unsigned
    with pytest.raises(ArtifactError, match="is not signed"):
        reg.check_version(w)
    u = reg.register(_version_files(), meta={"threshold": 0.5})
    monkeypatch.setenv("RP_SIGNING_KEY", "k3y-only-the-deployer-holds")
    with pytest.raises(ArtifactError, match="does not match its signature"):  # signed with another key
        reg.check_version(u)


def test_the_signing_key_is_needed_only_to_sign_or_check(tmp_path, monkeypatch):
    monkeypatch.delenv("RP_SIGNING_KEY", raising=False)
    reg = Registry(str(tmp_path / "store"), "p", signing_key_env="RP_SIGNING_KEY")
    assert reg.versions() == [] and reg.aliases() == {}
    from raypipe.errors import SpecError

    with pytest.raises(SpecError, match="registry.signing_key_env.*'RP_SIGNING_KEY' is not set"):
        reg.register(_version_files())


def test_a_pinned_manifest_refuses_a_version_re_sealed_after_the_check(tmp_path):
    reg = Registry(str(tmp_path / "store"), "p")
    v = reg.register(_version_files(), meta={"threshold": 0.5})
    vs = reg.version_store(v)
    pin = reg.check_version(v)
    assert Predictor.from_version(vs, v, manifest_sha256=pin).threshold == 0.5
    _re_seal(vs, _raise_threshold)
    with pytest.raises(ArtifactError, match="manifest changed after it was verified"):
        Predictor.from_version(vs, v, manifest_sha256=pin)
