"""The `raypipe` command as a user runs it: a fresh process, its own local Ray, exit codes."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import free_port, small_spec


def raypipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raypipe", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    spec = small_spec("store", name="t-cli", rows=2000, deploy={"port": free_port()},
                      ray={"temp_dir": str(d / "ray")})
    path = d / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_trains_deploys_answers_a_request_and_shuts_down(spec_file):
    proc = raypipe("run", str(spec_file), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["version"] == 1 and summary["alias"] == "champion"
    assert set(summary["stages"]) == {"ingest", "validate", "features", "train", "evaluate", "register"}
    answers = summary["sample_response"]["predictions"]
    assert len(answers) == len(summary["sample_request"]) == 2
    assert all(a["prediction"] in (0, 1) for a in answers)
    assert "[6/6] register ran" in proc.stderr  # stage-by-stage progress
    # ... and no output of Ray's workers and actors, no Serve INFO lines (ray.log_to_driver is off). Errors the
    # raylet reports to the driver ("(raylet) ...") still print: at shutdown Serve's own controller kill may cause one.
    assert not re.search(r"\((\w+ )?pid=\d+|INFO .* serve \d+ --", proc.stderr), proc.stderr[-3000:]
    assert (spec_file.parent / "store" / "registry" / "t-cli" / "aliases" / "champion.json").exists()
    with pytest.raises(httpx.ConnectError):  # shut down cleanly: nothing listens any more
        httpx.get(summary["endpoint"] + "/healthz", timeout=5)


def test_second_run_is_cached_and_registry_lists_the_version(spec_file):
    proc = raypipe("run", str(spec_file), "--json", "--no-serve")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {s["status"] for s in summary["stages"].values()} == {"cached"}
    listing = raypipe("registry", "list", str(spec_file), "--json")
    versions = json.loads(listing.stdout)
    assert [v["version"] for v in versions] == [1] and versions[0]["aliases"] == ["champion"]


def test_export_onnx_answers_like_the_registered_version(spec_file):
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

    from raypipe.export import onnx_feed
    from raypipe.model.predictor import Predictor
    from raypipe.registry import Registry
    from raypipe.serve.deploy import sample_request
    from raypipe.spec import load_spec

    out = spec_file.parent / "fraud.onnx"
    proc = raypipe("export", str(spec_file), "--format", "onnx", "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["version"] == 1 and summary["path"] == str(out) and out.stat().st_size == summary["bytes"]
    spec = load_spec(spec_file)
    predictor = Predictor.from_version(Registry(spec.storage, spec.name).version_store(1), 1)
    rows = pd.DataFrame.from_records(sample_request(spec, 1, n=300))  # the version's own test rows
    answers = ort.InferenceSession(str(out)).run(["scores", "class_index"], onnx_feed(predictor.features, rows))
    np.testing.assert_allclose(answers[0], predictor.scores(rows), atol=1e-5)
    assert len(rows) == 300 and (answers[1] == predictor.decide(predictor.scores(rows))).mean() > 0.99

    bad = raypipe("export", str(spec_file), "--format", "tflite")
    assert bad.returncode == 2 and "No such command 'tflite'" in bad.stderr


def test_failed_gate_exits_4(spec_file):
    spec = yaml.safe_load(spec_file.read_text())
    spec["evaluate"] = {"gate": {"min": {"roc_auc": 0.9999}}}
    strict = spec_file.parent / "strict.yaml"
    strict.write_text(yaml.safe_dump(spec))
    proc = raypipe("run", str(strict), "--json")
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "evaluation gate not passed" in proc.stderr and "roc_auc >= 0.9999" in proc.stderr


def test_bad_spec_exits_2_with_the_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  source: {type: builtin}\n  target: is_fraud\ntrain: {epocs: 3}\n")
    proc = raypipe("run", str(bad))
    assert proc.returncode == 2
    assert "train.epocs: unknown key; did you mean 'epochs'?" in proc.stderr


def test_unknown_option_is_a_usage_error_not_a_traceback():
    proc = raypipe("run", "--bogus-flag", timeout=60)
    assert proc.returncode == 2
    assert "No such option: --bogus-flag" in proc.stderr
    assert "Traceback" not in proc.stderr and "NoSuchOption" not in proc.stderr
