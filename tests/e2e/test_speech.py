"""Speech end to end: espeak-ng clips -> audio source -> log-mel features -> torch.audio -> a served endpoint.

The test split holds whole voices the model never heard (``data.split.group_by: speaker``).
The CNN must reach 0.9 accuracy there and do at least as well as the linear baseline that
evaluate fits on the same features. A served endpoint takes a clip's WAV file base64-encoded
and answers as the registered version's Predictor does offline, and as ``raypipe predict``
does on the stored waveforms; a bad clip is a 422 naming the ``audio`` field. Needs espeak-ng
(``scripts/test-deps.sh`` installs it; without it the generator's error says how).
"""
from __future__ import annotations

import base64
import copy
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

import raypipe
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from tests.conftest import champion_predictor, delete_new_apps, free_port, serve_apps

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("yes", "no", "up", "down")

@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """The speech example at a reduced size: 4 words x 20 voices x 2 clips; 5 voices held out for test."""
    from raypipe.ingest.speech import write_speech_commands

    tmp = tmp_path_factory.mktemp("speech")
    write_speech_commands(tmp / "clips", words=WORDS, per_voice=2)
    spec = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "speech_commands" / "pipeline.yaml").read_text()))
    spec["storage"] = str(tmp / "store")
    spec["data"]["source"]["path"] = str(tmp / "clips")
    spec["deploy"]["port"] = free_port()
    spec = raypipe.load_spec(spec)
    return spec, raypipe.run(spec, progress=Progress(quiet=True)), tmp / "clips"


def test_cnn_beats_the_linear_baseline_on_held_out_voices(trained):
    spec, result, _ = trained
    assert result.status == "ok", result.summary()
    val = result.outputs["validate"]
    speakers = {s: set(read_parquet(val.store, val.outputs.splits[s]).to_pandas()["speaker"]) for s in
                ("train", "validation", "test")}
    assert len(speakers["test"]) == 5 and not speakers["test"] & (speakers["train"] | speakers["validation"])
    linear = result.baselines["linear"]
    assert linear["model"] == "LogisticRegression"
    acc = result.metrics["accuracy"]
    assert acc >= 0.9, result.summary()
    assert acc >= linear["metrics"]["accuracy"], result.summary()
    meta = result.outputs["train"].store.read_json("model", "model.json")
    assert meta["kind"] == "torch.audio" and meta["layout"] == [
        {"kind": "audio", "columns": ["audio"], "start": 0, "stop": 40 * 51, "shape": [40, 51, 1]}]


def test_endpoint_takes_base64_wav_and_answers_as_offline(trained, tmp_path):
    spec, result, clips = trained
    val = result.outputs["validate"]
    test = read_parquet(val.store, val.outputs.splits["test"]).to_pandas().head(8)
    rows = [{"audio": np.asarray(a, dtype=np.float32), "speaker": s} for a, s in zip(test["audio"], test["speaker"])]
    offline = champion_predictor(spec.storage, spec.name).predict_records(rows)
    # `raypipe predict` (Ray Data) on the same stored waveforms
    src = tmp_path / "rows.parquet"
    pd.DataFrame({"audio": [r["audio"].tolist() for r in rows], "speaker": test["speaker"]}).to_parquet(src)
    raypipe.predict(spec, str(src), str(tmp_path / "out"))
    batch = pd.read_parquet(tmp_path / "out")
    assert sorted(batch["prediction"]) == sorted(p["prediction"] for p in offline)
    before = serve_apps()
    try:
        endpoint = raypipe.serve(spec)
        # A held-out voice's clip file, as a client has it: the decoded file is the stored waveform.
        files = {}
        for i, row in test.iterrows():
            matches = sorted((clips / row["label"]).glob(f"{row['speaker']}_*.wav"))
            wav = next(f for f in matches if np.array_equal(
                _decoded(f.read_bytes()), np.asarray(row["audio"], dtype=np.float32)))
            files[i] = wav
        body = [{"audio": base64.b64encode(files[i].read_bytes()).decode(), "speaker": test["speaker"][i]}
                for i in test.index]
        online = httpx.post(f"{endpoint.url}/predict", json=body, timeout=120)
        assert online.status_code == 200, online.text
        preds = online.json()["predictions"]
        assert [p["prediction"] for p in preds] == [p["prediction"] for p in offline]
        for p, q in zip(preds, offline):
            assert p["scores"] == pytest.approx(q["scores"], rel=1e-4, abs=1e-6)
        for bad, what in (("bm90IGEgd2F2", "cannot decode audio"), ("@@not base64@@", "not base64")):
            r = httpx.post(f"{endpoint.url}/predict", json={"audio": bad}, timeout=60)
            assert r.status_code == 422, r.text
            assert any(e["loc"][-1] == "audio" and what in e["msg"] for e in r.json()["detail"]), r.text
    finally:
        delete_new_apps(before)


def _decoded(data: bytes) -> np.ndarray:
    from raypipe.model.waveform import decode_audio

    return decode_audio(data, 16000, 16000)
