"""Audio columns: waveforms -> log-mel spectrograms, optionally standardised per mel band, flattened.

A waveform is a float32 array of the schema's ``samples`` at its ``sample_rate`` (the
audio source and :mod:`raypipe.model.waveform` make every clip that long; a request's
base64 WAV is decoded by the same code). Its spectrogram is
``librosa.feature.melspectrogram`` (``n_fft`` = the window, Hann, centred, power 2) in
decibels (``power_to_db``, ``ref=1.0``, floor -100 dB), of shape ``(n_mels, frames)``
and flattened in C order (band by band). With ``normalize="standard"`` each mel band is
then standardised by its training mean/std over all frames, from mergeable sums (exact,
not estimated). A missing waveform (None) gives all-zero features (the training mean when
standardised) and is ignored by the statistics.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raypipe.model.features.base import Batch, Operator, column, num_rows

NORMALIZE = ("standard", "none")
TOP_DB_FLOOR = -100.0  # decibels of silence (power_to_db's amin=1e-10)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


class AudioTransformer(Operator):
    """Log-mel spectrograms of waveform columns.

    Args:
        columns: input audio columns.
        samples: each column's waveform length (the schema's ``shape[0]``).
        sample_rate: each column's sample rate in Hz (the schema's ``sample_rate``).
        n_mels: mel bands.
        hop_ms, win_ms: frame step and analysis window (FFT size) in milliseconds.
        normalize: ``standard`` (minus the band's training mean, over its std) or ``none`` (dB).
    """

    kind = "audio"
    state_keys = ("mean_", "std_")

    def __init__(self, columns: Sequence[str], *, samples: Mapping[str, int], sample_rate: Mapping[str, int],
                 n_mels: int = 40, hop_ms: float = 10.0, win_ms: float = 25.0, normalize: str = "standard") -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"audio normalize must be one of {NORMALIZE}, not {normalize!r}")
        self.columns, self.normalize = list(columns), normalize
        missing = [c for c in self.columns if c not in samples or c not in sample_rate]
        if missing:
            raise ValueError(f"audio columns {missing} have no length or sample rate; the schema gives them as "
                             "columns[c].shape and columns[c].sample_rate")
        self.samples = {c: int(samples[c]) for c in self.columns}
        self.sample_rate = {c: int(sample_rate[c]) for c in self.columns}
        self.n_mels, self.hop_ms, self.win_ms = int(n_mels), float(hop_ms), float(win_ms)
        for c in self.columns:
            if self._n_fft(c) < 2 or self._hop(c) < 1:
                raise ValueError(f"audio column {c!r}: hop_ms {hop_ms} / win_ms {win_ms} are too short for "
                                 f"{self.sample_rate[c]} Hz; use at least 1 sample per hop and 2 per window")

    def get_params(self) -> dict[str, Any]:
        return {"columns": self.columns, "samples": self.samples, "sample_rate": self.sample_rate,
                "n_mels": self.n_mels, "hop_ms": self.hop_ms, "win_ms": self.win_ms, "normalize": self.normalize}

    def _hop(self, c: str) -> int:
        return int(round(self.sample_rate[c] * self.hop_ms / 1000.0))

    def _n_fft(self, c: str) -> int:
        return int(round(self.sample_rate[c] * self.win_ms / 1000.0))

    def frames(self, c: str) -> int:
        """Spectrogram frames of a column's clip (centred frames: 1 + samples // hop)."""
        return 1 + self.samples[c] // self._hop(c)

    def shape(self, c: str) -> list[int]:
        return [self.n_mels, self.frames(c)]

    def waveforms(self, c: str, col: Any) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (rows, samples) with 0 where missing, the present-rows mask)."""
        n = self.samples[c]
        if isinstance(col, np.ndarray) and col.dtype != object and col.ndim == 2:
            if col.shape[1] != n:
                raise ValueError(f"audio column {c!r}: expected waveforms of {n} samples, got {col.shape[1]}")
            return col.astype(np.float32, copy=False), np.ones(len(col), dtype=bool)
        values = list(col.to_numpy(dtype=object) if isinstance(col, pd.Series) else col)
        present = np.array([not _is_missing(v) for v in values], dtype=bool)
        arr = np.zeros((len(values), n), dtype=np.float32)
        for i in np.nonzero(present)[0]:
            y = np.asarray(values[i], dtype=np.float32).reshape(-1)
            if len(y) != n:
                raise ValueError(f"audio column {c!r}: expected a waveform of {n} samples, got {len(y)} (row {i})")
            arr[i] = y
        return arr, present

    def log_mel(self, c: str, y: np.ndarray) -> np.ndarray:
        """(rows, samples) waveforms -> (rows, n_mels, frames) log-mel spectrograms in dB."""
        import librosa

        if len(y) == 0:
            return np.zeros((0, *self.shape(c)), dtype=np.float32)
        mel = librosa.feature.melspectrogram(y=y, sr=self.sample_rate[c], n_fft=self._n_fft(c), hop_length=self._hop(c),
                                             n_mels=self.n_mels, power=2.0)
        return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).astype(np.float32)

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        """Per column and mel band: frame count, sum and sum of squares of the dB values."""
        if self.normalize == "none":
            return {}
        out = {}
        for c in self.columns:
            y, present = self.waveforms(c, column(batch, c))
            db = self.log_mel(c, y[present]).astype(np.float64)  # (rows, n_mels, frames)
            out[c] = {"n": int(db.shape[0] * db.shape[2]), "sum": db.sum(axis=(0, 2)).tolist(),
                      "sumsq": np.square(db).sum(axis=(0, 2)).tolist()}
        return out

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        self.mean_: dict[str, list[float]] = {}
        self.std_: dict[str, list[float]] = {}
        if self.normalize == "none":
            return
        for c in self.columns:
            n = sum(p[c]["n"] for p in parts)
            if n == 0:
                raise ValueError(f"audio column {c!r} has no waveforms in the training data")
            mean = np.sum([p[c]["sum"] for p in parts], axis=0) / n
            std = np.sqrt(np.maximum(np.sum([p[c]["sumsq"] for p in parts], axis=0) / n - mean * mean, 0.0))
            self.mean_[c] = mean.tolist()
            self.std_[c] = np.where(std > 1e-6, std, 1.0).tolist()

    # -- transforming -----------------------------------------------------------------
    def transform(self, batch: Batch) -> np.ndarray:
        self.check_fitted()
        n = num_rows(batch)
        blocks = []
        for c in self.columns:
            y, present = self.waveforms(c, column(batch, c))
            db = self.log_mel(c, y)
            if self.normalize == "standard":
                db = (db - np.asarray(self.mean_[c], dtype=np.float32)[:, None]) / np.asarray(self.std_[c], dtype=np.float32)[:, None]
                db[~present] = 0.0
            else:
                db[~present] = TOP_DB_FLOOR
            blocks.append(db.reshape(n, -1).astype(np.float32))
        return np.hstack(blocks) if blocks else np.zeros((n, 0), dtype=np.float32)

    @property
    def feature_names(self) -> list[str]:
        return [f"{c}[mel{m},t{t}]" for c in self.columns for m in range(self.n_mels) for t in range(self.frames(c))]
