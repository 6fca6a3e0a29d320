"""Audio without Ray: decoding and fitting a clip's length, log-mel features, the request type, torch.audio."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError

from raypipe.errors import SpecError, UndecodableFileError
from raypipe.model.features.audio import AudioTransformer
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.model.waveform import decode_audio, decode_base64_audio, fit_length
from raypipe.model.zoo import build_model, check_layout
from raypipe.serve.request_model import request_model

RATE = 8000


def _tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav(y: np.ndarray, rate: int, channels: int = 1, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.stack([y] * channels, axis=1) if channels > 1 else y, rate, format=fmt)
    return buf.getvalue()


# --- decoding -------------------------------------------------------------------------
def test_fit_length_pads_with_silence_or_trims():
    y = np.arange(5, dtype=np.float64)
    assert fit_length(y, 8).tolist() == [0, 1, 2, 3, 4, 0, 0, 0] and fit_length(y, 8).dtype == np.float32
    assert fit_length(y, 3).tolist() == [0, 1, 2]


def test_decode_resamples_mixes_to_mono_and_fits_the_length():
    tone = _tone(440, 0.5, 22050)
    y = decode_audio(_wav(tone, 22050, channels=2), RATE, RATE)  # 0.5 s at 22.05 kHz -> 1 s at 8 kHz
    assert y.shape == (RATE,) and y.dtype == np.float32
    assert np.abs(y[RATE // 2 + 50:]).max() == 0.0  # padded with silence after the 0.5 s tone
    spectrum = np.abs(np.fft.rfft(y[: RATE // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 4  # still a 440 Hz tone after resampling (2 Hz per bin)
    flac = decode_audio(_wav(tone, 22050, fmt="FLAC"), RATE, RATE)
    assert np.allclose(flac, y, atol=1e-3)


def test_a_damaged_clip_names_the_file():
    good = _wav(_tone(440, 0.2, RATE), RATE)
    for data, why in ((b"RIFF\x00\x00junk", "LibsndfileError|Error"), (b"", "Error"),
                      (_wav(np.zeros(0, dtype=np.float32), RATE), "no samples")):
        with pytest.raises(UndecodableFileError, match=f"clips/yes/a_1.wav.*({why})"):
            decode_audio(data, RATE, RATE, "clips/yes/a_1.wav")
    assert decode_audio(good, RATE, RATE).shape == (RATE,)


def test_base64_errors_say_what_to_send():
    with pytest.raises(ValueError, match="not base64.*b64encode"):
        decode_base64_audio("not base64 !!", RATE, RATE)
    with pytest.raises(ValueError, match="cannot decode audio '<request>'.*send a WAV"):
        decode_base64_audio(base64.b64encode(b"plain text, not a wav").decode(), RATE, RATE)


# --- features -------------------------------------------------------------------------
def _op(**kw) -> AudioTransformer:
    return AudioTransformer(["a"], samples={"a": RATE}, sample_rate={"a": RATE}, n_mels=16, hop_ms=20, **kw)


def _clips(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([_tone(float(rng.uniform(200, 2000)), 1.0, RATE) + rng.normal(0, 0.01, RATE).astype(np.float32)
                     for _ in range(n)])


def test_log_mel_shape_and_per_band_standardisation():
    op = _op()
    x = _clips(12)
    op.fit({"a": x})
    assert op.shape("a") == [16, 51] and op.n_features == 16 * 51
    f = op.transform({"a": x}).reshape(12, 16, 51)
    assert f.dtype == np.float32
    assert np.allclose(f.mean(axis=(0, 2)), 0.0, atol=1e-3) and np.allclose(f.std(axis=(0, 2)), 1.0, atol=1e-3)
    # A louder tone in a high band shows up there, not in the low bands.
    high = op.log_mel("a", _tone(3000, 1.0, RATE)[None])[0]
    assert high[-4:].mean() > high[:4].mean() + 20


def test_statistics_merge_across_blocks_exactly_and_round_trip_as_json():
    x = _clips(10)
    whole = _op().fit({"a": x})
    parts = _op().fit_from_stats([_op().partial_stats({"a": x[:3]}), _op().partial_stats({"a": x[3:]})])
    assert np.allclose(whole.mean_["a"], parts.mean_["a"]) and np.allclose(whole.std_["a"], parts.std_["a"])
    import json

    back = AudioTransformer.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert np.array_equal(back.transform({"a": x}), whole.transform({"a": x}))


def test_missing_and_wrong_length_waveforms():
    op = _op().fit({"a": _clips(4)})
    out = op.transform({"a": [None, _clips(1)[0]]})
    assert np.all(out[0] == 0.0) and np.any(out[1] != 0.0)  # missing: the training mean
    with pytest.raises(ValueError, match="audio column 'a': expected a waveform of 8000 samples, got 10"):
        op.transform({"a": [np.zeros(10)]})
    with pytest.raises(ValueError, match="normalize must be one of"):
        _op(normalize="minmax")


def _schema() -> dict:
    return {"columns": {"audio": {"type": "audio", "shape": [RATE], "sample_rate": RATE, "nullable": False},
                        "speaker": {"type": "string"}, "label": {"type": "string"}},
            "features": {"audio": ["audio"], "numeric": [], "categorical": []},
            "id_columns": ["speaker"], "target": {"name": "label", "type": "string", "task": "classification"}}


def test_pipeline_layout_and_one_record_equals_the_batch():
    from raypipe.spec import FeaturesSection

    pipe = FeaturePipeline.from_spec(FeaturesSection(audio={"n_mels": 16, "hop_ms": 20}), _schema())
    x = _clips(6)
    pipe.fit({"audio": x})
    assert pipe.layout() == [{"kind": "audio", "columns": ["audio"], "start": 0, "stop": 16 * 51, "shape": [16, 51, 1]}]
    batch = pipe.transform({"audio": x})
    one = pipe.transform({"audio": x[2]})  # a single record: one waveform
    records = pipe.transform([{"audio": x[i].tolist()} for i in range(3)])
    assert np.allclose(one[0], batch[2], atol=1e-5) and np.allclose(records, batch[:3], atol=1e-5)
    back = FeaturePipeline.from_dict(pipe.to_dict())
    assert np.array_equal(back.transform({"audio": x}), batch)


# --- the request type -----------------------------------------------------------------
def test_request_takes_base64_wav_or_samples_and_refuses_bad_audio_naming_the_field():
    Row = request_model(_schema())
    wav = _wav(_tone(440, 0.3, 22050), 22050)
    row = Row.model_validate_json(f'{{"audio": "{base64.b64encode(wav).decode()}", "speaker": "x"}}').model_dump()
    assert np.array_equal(row["audio"], decode_audio(wav, RATE, RATE))  # the ingest decoder, bit for bit
    assert Row(audio=[0.0] * RATE).model_dump()["audio"].shape == (RATE,)
    for bad, msg in (('"@@@"', "not base64"), (f'"{base64.b64encode(b"hello").decode()}"', "cannot decode audio"),
                     ("[0.5, 0.25]", "a waveform of 2 samples != 8000"), ("12", "expected the clip's file")):
        with pytest.raises(ValidationError) as e:
            Row.model_validate_json(f'{{"audio": {bad}}}')
        err = e.value.errors()[0]
        assert err["loc"] == ("audio",) and msg in err["msg"], err


# --- torch.audio ----------------------------------------------------------------------
def test_audio_cnn_reads_the_audio_block_and_the_rest():
    layout = [{"kind": "numeric", "columns": ["n"], "start": 0, "stop": 2},
              {"kind": "audio", "columns": ["audio"], "start": 2, "stop": 2 + 16 * 51, "shape": [16, 51, 1]}]
    net = build_model("torch.audio", input_dim=2 + 16 * 51, n_outputs=5, layout=layout)
    net.eval()
    x = torch.randn(3, 2 + 16 * 51)
    assert net(x).shape == (3, 5)
    assert not torch.allclose(net(x), net(x.index_fill(1, torch.tensor([0]), 5.0)))  # the numeric column counts
    with pytest.raises(SpecError, match="torch.audio needs exactly one audio column.*data.source.type: audio"):
        check_layout("torch.audio", [{"kind": "image", "columns": ["i"], "start": 0, "stop": 4, "shape": [2, 2, 1]}])


def test_onnx_export_refuses_audio_features_naming_them():
    from raypipe.errors import ExportError
    from raypipe.export.onnx_features import check_exportable
    from raypipe.spec import FeaturesSection

    pipe = FeaturePipeline.from_spec(FeaturesSection(audio={"n_mels": 16, "hop_ms": 20}), _schema()).fit({"audio": _clips(3)})
    with pytest.raises(ExportError, match=r"audio columns \['audio'\] have no ONNX form.*raypipe serve"):
        check_exportable(pipe)
