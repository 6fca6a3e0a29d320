"""The audio folder-tree source: decoded clips, undecodable ones named and counted, whole speakers per split."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import raypipe
from raypipe.datasets import read_parquet
from raypipe.errors import DataValidationError
from raypipe.ingest.audio import speaker_of
from raypipe.ingest.speech import ESPEAK_MISSING, espeak_binary
from raypipe.ingest.split import _group_bounds, check_groups
from raypipe.progress import Progress

quiet = Progress(quiet=True)
RATE = 8000
SPEAKERS = [f"s{i}" for i in range(10)]


def _write_tree(root: Path) -> None:
    """2 words x 10 speakers x 2 clips: tones of a word's pitch, at 22.05 kHz (resampled on read), some stereo."""
    rng = np.random.default_rng(0)
    for word, freq in (("low", 300.0), ("high", 1500.0)):
        (root / word).mkdir(parents=True)
        for s, speaker in enumerate(SPEAKERS):
            for i in range(2):
                t = np.arange(int(0.4 * 22050)) / 22050
                y = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * s) * t) + rng.normal(0, 0.01, len(t))
                data = np.stack([y, y], axis=1) if i else y
                sf.write(root / word / f"{speaker}_{i}.wav", data, 22050)
    (root / "low" / "README.txt").write_text("not audio: skipped by extension")


def _spec(tmp_path: Path, root: Path, **source) -> dict:
    return {"name": "t-audio", "storage": str(tmp_path / "store"),
            "data": {"source": {"type": "audio", "path": str(root), "sample_rate": RATE, "duration_s": 0.5, **source},
                     "target": "label", "id_columns": ["speaker"],
                     "split": {"test": 0.2, "validation": 0.2, "group_by": "speaker", "seed": 3}}}


def test_speaker_is_the_file_name_prefix():
    assert speaker_of("clips/yes/en-us-m1_003.wav") == "en-us-m1"
    assert speaker_of("clips/yes/alice.flac") == "alice" and speaker_of("a\\b\\bob_x_1.wav") == "bob"


def test_group_bounds_cut_between_groups():
    u = np.sort(np.repeat(np.linspace(0.05, 0.95, 10), 4))  # 10 groups of 4 rows
    lo, hi = _group_bounds(u, 0.2, 0.2)
    assert (u < lo).sum() == 8 and ((u >= lo) & (u < hi)).sum() == 8  # 2 whole groups each
    assert _group_bounds(np.repeat([0.3, 0.6, 0.9], 5), 0.01, 0.0) == (0.6, 0.6)  # at least one test group
    check_groups("speaker", np.array([0.1, 0.5]), 0.0)
    with pytest.raises(DataValidationError, match="'speaker' has 2 distinct value.*at least 3.*validation: 0"):
        check_groups("speaker", np.array([0.1, 0.5]), 0.15)


def test_clips_are_decoded_and_whole_speakers_go_to_one_split(tmp_path: Path, ray_session):
    root = tmp_path / "clips"
    _write_tree(root)
    result = raypipe.run(_spec(tmp_path, root), until="validate", progress=quiet)
    ingest = result.outputs["ingest"].outputs
    assert ingest.rows == {"train": 24, "validation": 8, "test": 8}
    assert ingest.files == {"read": 40, "skipped_bad": 0} and ingest.skipped_files == []
    val = result.outputs["validate"]
    schema = val.store.read_json("schema.json")
    assert schema["columns"]["audio"] == {"type": "audio", "shape": [4000], "sample_rate": RATE, "nullable": False}
    assert schema["features"]["audio"] == ["audio"] and schema["features"]["categorical"] == []
    speakers = {}
    for split in ("train", "validation", "test"):
        t = read_parquet(val.store, val.outputs.splits[split]).to_pandas()
        speakers[split] = set(t["speaker"])
        assert sorted(t["label"].unique()) == ["high", "low"]
        waves = np.stack(t["audio"].to_numpy())
        assert waves.shape[1] == 4000 and waves.dtype == np.float32
        assert np.abs(waves[:, 3300:]).max() == 0.0  # 0.4 s of sound padded to 0.5 s with silence
    assert len(speakers["test"]) == 2 and len(speakers["validation"]) == 2
    assert not (speakers["test"] & speakers["train"]) and not (speakers["validation"] & speakers["train"])


def test_an_undecodable_clip_is_skipped_by_name_or_stops_the_run(tmp_path: Path, ray_session):
    root = tmp_path / "clips"
    _write_tree(root)
    good = (root / "high" / "s1_0.wav").read_bytes()
    (root / "high" / "s1_0.wav").write_bytes(good[:40])  # truncated inside the header
    (root / "low" / "s2_1.wav").write_bytes(b"this is not a wav file at all")
    result = raypipe.run(_spec(tmp_path, root), until="validate", progress=quiet)
    ingest = result.outputs["ingest"].outputs
    assert sum(ingest.rows.values()) == 38 and ingest.files == {"read": 38, "skipped_bad": 2}
    named = {os.path.basename(s["file"]): s for s in ingest.skipped_files}
    assert set(named) == {"s1_0.wav", "s2_1.wav"} and all(s["kind"] == "bad" for s in named.values())
    assert "cannot decode audio" in named["s2_1.wav"]["reason"]
    report = result.outputs["validate"].store.read_json("report.json")
    assert report["input_files"]["counts"]["skipped_bad"] == 2
    with pytest.raises(DataValidationError, match=r"(?s)s1_0\.wav.*s2_1\.wav.*2 of 40 audio file\(s\).*on_bad_files: skip"):
        raypipe.run(_spec(tmp_path / "fail", root, on_bad_files="fail"), until="ingest", progress=quiet)


def test_group_by_names_a_missing_column(tmp_path: Path, ray_session):
    root = tmp_path / "clips"
    _write_tree(root)
    spec = _spec(tmp_path, root)
    spec["data"]["split"]["group_by"] = "voice"
    spec["data"]["id_columns"] = ["speaker", "voice"]
    with pytest.raises(Exception, match="data.split.group_by: column 'voice' not found"):
        raypipe.run(spec, until="ingest", progress=quiet)


def test_speech_generator_needs_espeak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no espeak-ng
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        espeak_binary()
    assert "apt-get install espeak-ng" in ESPEAK_MISSING


def test_speech_generator_writes_seeded_clips_per_voice(tmp_path: Path):
    from raypipe.ingest.speech import write_speech_commands

    n = write_speech_commands(tmp_path / "a", words=("yes", "no"), voices=("en-us+m1", "en-gb+f2"), per_voice=2)
    assert n == 8
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.wav"))
    assert files[:4] == ["no/en-gb-f2_000.wav", "no/en-gb-f2_001.wav", "no/en-us-m1_000.wav", "no/en-us-m1_001.wav"]
    y, rate = sf.read(io.BytesIO((tmp_path / "a" / "yes" / "en-us-m1_000.wav").read_bytes()))
    assert rate == 16000 and len(y) == 16000 and np.abs(y).max() > 0.1  # a spoken word, not just noise
    write_speech_commands(tmp_path / "b", words=("yes", "no"), voices=("en-us+m1", "en-gb+f2"), per_voice=2)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)  # seeded


def test_spec_errors_name_the_field_and_the_fix():
    from raypipe.errors import SpecError

    base = {"name": "t", "data": {"source": {"type": "audio", "path": "clips"}, "target": "label"}}
    spec = raypipe.load_spec(base)
    assert spec.data.source.samples == 16000 and spec.features.audio.n_mels == 40
    with pytest.raises(SpecError, match="group_by.*'speaker' must also be listed in data.id_columns"):
        raypipe.load_spec({**base, "data": {**base["data"], "split": {"group_by": "speaker"}}})
    with pytest.raises(SpecError, match="duration_s"):
        raypipe.load_spec({**base, "data": {**base["data"], "source": {"type": "audio", "path": "c", "duration_s": 0}}})
    with pytest.raises(SpecError, match="n_mels"):
        raypipe.load_spec({**base, "features": {"audio": {"n_mels": 1}}})
    with pytest.raises(SpecError, match="did you mean 'torch.audio'"):
        raypipe.load_spec({**base, "model": {"kind": "torch.audi"}})
