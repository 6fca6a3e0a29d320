"""Spoken command words for the speech example and tests, synthesised with espeak-ng.

Real recordings (Google's Speech Commands) are a 2 GB download; espeak-ng (Debian package
``espeak-ng``) speaks the same words in many voices offline. Each voice is one speaker:
its clips are ``<root>/<word>/<voice>_<n>.wav``, so the audio source's ``speaker`` column
names the voice and ``data.split.group_by: speaker`` tests on voices never trained on.
Every clip gets its own speed, pitch, start offset and background noise (seeded numpy), so
no two clips of a voice are the same.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")
VOICES = (  # espeak-ng voice+variant names: accents and male/female variants
    "en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m5", "en-us+m6", "en-us+m7",
    "en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4",
    "en-gb+m3", "en-gb+f2", "en-gb-scotland+m1", "en-gb-x-rp+f4", "en-029+m2",
    "en-gb-x-gbclan+f3", "en-gb-x-gbcwmd+m4", "en-us+klatt", "en-gb+croak",
)
SAMPLE_RATE = 16_000
ESPEAK_MISSING = "espeak-ng is not installed; install it with: sudo apt-get install espeak-ng"


def espeak_binary() -> str:
    """The path of ``espeak-ng``.

    Raises:
        FileNotFoundError: it is not on the PATH; the message says how to install it.
    """
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError(ESPEAK_MISSING)
    return path


def speak(word: str, voice: str, *, speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """``word`` spoken by espeak-ng's ``voice`` at ``speed`` words/min and ``pitch`` (0-99): (float32, rate)."""
    import soundfile as sf

    out = subprocess.run([espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         capture_output=True, check=False, timeout=60)
    if out.returncode != 0 or not out.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} (exit {out.returncode}): "
                           f"{out.stderr.decode(errors='replace').strip()[:300]}; `espeak-ng --voices` lists voices")
    y, rate = sf.read(io.BytesIO(out.stdout), dtype="float32")
    return y, int(rate)


def write_speech_commands(root: Path, words: Sequence[str] = WORDS, voices: Sequence[str] = VOICES,
                          per_voice: int = 3, seed: int = 0, noise: tuple[float, float] = (0.002, 0.02),
                          duration_s: float = 1.0) -> int:
    """Writes ``root/<word>/<voice>_<n>.wav`` (16 kHz, 16-bit mono): ``per_voice`` clips of each word per voice.

    Each clip is spoken at a random speed (130-200 words/min) and pitch (25-75), placed at a
    random offset in a ``duration_s`` clip (cut if longer), with white noise of a random
    amplitude in ``noise`` (uniform). A voice's name in file names has ``+`` replaced by ``-``.
    Seeded: the same arguments write the same files.

    Raises:
        FileNotFoundError: espeak-ng is not installed (the message says ``apt-get install espeak-ng``).

    Returns:
        The number of files written.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    espeak_binary()
    rng = np.random.default_rng(seed)
    length = int(round(SAMPLE_RATE * duration_s))
    n = 0
    for word in words:
        folder = Path(root) / word
        folder.mkdir(parents=True, exist_ok=True)
        for voice in voices:
            for i in range(per_voice):
                y, rate = speak(word, voice, speed=int(rng.integers(130, 201)), pitch=int(rng.integers(25, 76)))
                if rate != SAMPLE_RATE:
                    g = np.gcd(rate, SAMPLE_RATE)
                    y = resample_poly(y, SAMPLE_RATE // g, rate // g).astype(np.float32)
                y = _trim_silence(y)[:length]
                clip = np.zeros(length, dtype=np.float32)
                start = int(rng.integers(0, max(1, length - len(y)) + 1)) if len(y) < length else 0
                clip[start:start + len(y)] = y
                clip += rng.normal(0.0, rng.uniform(*noise), length).astype(np.float32)
                sf.write(folder / f"{voice.replace('+', '-')}_{i:03d}.wav", np.clip(clip, -1, 1), SAMPLE_RATE,
                         subtype="PCM_16")
                n += 1
    return n


def _trim_silence(y: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """``y`` without its leading and trailing near-silence (espeak pads its output)."""
    loud = np.nonzero(np.abs(y) > threshold)[0]
    return y[loud[0]:loud[-1] + 1] if len(loud) else y
