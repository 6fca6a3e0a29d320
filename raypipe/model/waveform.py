"""Audio bytes -> one fixed-length mono float32 waveform, the same way in ingest and in serving.

A clip is decoded with soundfile (WAV, FLAC, OGG: whatever libsndfile reads), its
channels averaged to mono, resampled to the pipeline's rate with ``librosa.resample``
(soxr, high quality), then padded with silence at the end or trimmed to the pipeline's
length. The ingest stage reads training clips through :func:`decode_audio`, and an
endpoint decodes a request's base64 WAV through :func:`decode_base64_audio`: one code
path, so a clip gives the same samples whether it was trained on or sent. librosa and
soundfile rather than torchaudio: torchaudio's releases pin one torch version each, and
the one for our torch does not exist yet (installing it would replace torch).
"""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from raypipe.errors import UndecodableFileError

AUDIO_EXTENSIONS = ["wav", "flac", "ogg"]
INSTALL_HINT = "install raypipe's audio extra: pip install 'raypipe[audio]' (librosa, soundfile)"


def fit_length(y: np.ndarray, samples: int) -> np.ndarray:
    """``y`` padded with zeros at the end, or trimmed, to exactly ``samples`` values (float32)."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if len(y) >= samples:
        return np.ascontiguousarray(y[:samples])
    return np.concatenate([y, np.zeros(samples - len(y), dtype=np.float32)])


def decode_audio(data: bytes, sample_rate: int, samples: int, path: str = "<bytes>") -> np.ndarray:
    """One clip's bytes -> a mono float32 waveform at ``sample_rate`` of exactly ``samples`` values.

    Raises:
        UndecodableFileError: soundfile cannot read the clip, or it holds no samples or
            non-finite ones; the message names ``path``.
    """
    try:
        import librosa
        import soundfile as sf
    except ImportError as e:  # pragma: no cover - the audio extra is missing
        raise ImportError(f"audio needs librosa and soundfile ({e}); {INSTALL_HINT}") from None
    try:
        y, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 -- libsndfile raises LibsndfileError, RuntimeError, TypeError...
        raise UndecodableFileError(f"cannot decode audio {path!r}: {type(e).__name__}: {e}") from None
    if y.size == 0:
        raise UndecodableFileError(f"cannot decode audio {path!r}: it holds no samples")
    y = y.mean(axis=1)
    if not np.isfinite(y).all():
        raise UndecodableFileError(f"cannot decode audio {path!r}: it holds NaN or infinite samples")
    if rate != sample_rate:
        y = librosa.resample(y, orig_sr=int(rate), target_sr=int(sample_rate))
    return fit_length(y, samples)


def decode_base64_audio(value: str, sample_rate: int, samples: int) -> np.ndarray:
    """A request's base64 string of an audio file (WAV, FLAC...) -> the waveform :func:`decode_audio` gives.

    Raises:
        ValueError: the string is not base64, or its bytes are not an audio file; the
            message says which and how to send one.
    """
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64 ({e}); send the file's bytes base64-encoded, e.g. "
                         "base64.b64encode(open('clip.wav', 'rb').read()).decode()") from None
    try:
        return decode_audio(data, sample_rate, samples, "<request>")
    except UndecodableFileError as e:
        raise ValueError(f"{e}; send a WAV or FLAC file, base64-encoded") from None
