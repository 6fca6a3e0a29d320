"""Signed registry versions end to end: a version re-sealed in storage by someone without the
key is refused by every path that would load it (batch predict, deploy, the champion
comparison of the next run, a replica given a pinned manifest)."""
from __future__ import annotations

import pandas as pd
import pytest

import raypipe
from raypipe.errors import ArtifactError, RaypipeError
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.app import load_version
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.test_registry import _raise_threshold, _re_seal

GATE = {"gate": {"min": {"roc_auc": 0.6}, "vs_champion": {"metric": "roc_auc", "min_delta": -1.0}}}


def test_a_re_sealed_champion_is_refused_everywhere_it_would_be_loaded(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("RP_E2E_SIGNING_KEY", "e2e-signing-key-0f9a")
    spec = raypipe.load_spec(small_spec(tmp_path / "store", name="t-signed", rows=1500, evaluate=GATE,
                                        registry={"signing_key_env": "RP_E2E_SIGNING_KEY"},
                                        deploy={"port": free_port()}))
    first = raypipe.run(spec, progress=Progress(quiet=True))
    reg = Registry.for_spec(spec)
    v = first.version
    assert reg.status(v) == "ready" and reg.alias("champion") == v
    vs = reg.version_store(v)
    assert vs.exists("_SIGNATURE.json")
    pin = reg.check_version(v)
    rows = sample_request(spec, v, n=4)
    src = tmp_path / "rows.parquet"
    pd.DataFrame.from_records(rows).to_parquet(src)
    assert raypipe.predict(spec, str(src), str(tmp_path / "ok"))["rows"] == 4  # signed and intact: served

    _re_seal(vs, _raise_threshold)  # a storage writer quietly changes the champion and re-seals it

    with pytest.raises(ArtifactError, match="does not match its signature"):
        raypipe.predict(spec, str(src), str(tmp_path / "out"))
    with pytest.raises(ArtifactError, match="does not match its signature"):
        deploy(spec)  # refused before Serve is asked to do anything
    with pytest.raises(ArtifactError, match="manifest changed after it was verified"):
        load_version(vs.full_uri(), v, spec.name, (), pin)  # a replica started after the forgery
    second = raypipe.load_spec({**spec.model_dump(mode="json", by_alias=True), "model": {
        "kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 300, "C": 0.1}}})
    with pytest.raises(RaypipeError, match="does not match its signature"):
        raypipe.run(second, progress=Progress(quiet=True))  # the gate's champion comparison loads it
    assert reg.alias("champion") == v and reg.versions() == [v]  # nothing promoted, nothing registered
