"""Loading driving audio from any file a user is likely to hand us.

``load_driving_audio`` returns float32 mono samples at 16 kHz. Every failure a user can cause (missing,
empty, corrupt, not audio, too short, silent) is a one-line ``InputError``.

Silence policy: an all-silent file (peak below -60 dBFS) is almost always a mistake (a muted track, the
wrong stream, a placeholder file), and driving a talking head with it silently yields a closed mouth,
so it is an error by default. ``allow_silent=True`` accepts it with a warning, for deliberate pauses.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

from synctalk.audio import SAMPLE_RATE
from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("audio.load")

MIN_SECONDS = 0.2          # one 16-mel-frame window (0.2 s) is the shortest thing the encoder can see
SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS


def load_driving_audio(path: str | os.PathLike, allow_silent: bool = False) -> np.ndarray:
    """Decode ``path`` (wav/mp3/flac/m4a/aac/ogg or a video's audio track) to float32 mono 16 kHz."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"audio file is empty (0 bytes): {path}")
    samples = _decode(path)
    seconds = samples.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise InputError(f"audio in {path.name} is too short ({seconds:.3f} s); at least {MIN_SECONDS} s is needed")
    if not np.all(np.isfinite(samples)):
        raise InputError(f"audio in {path.name} contains NaN/inf samples; the file is corrupt")
    peak = float(np.max(np.abs(samples)))
    if peak < SILENCE_PEAK:
        msg = f"audio in {path.name} is silent (peak {_dbfs(peak):.0f} dBFS over {seconds:.1f} s)"
        if not allow_silent:
            raise InputError(msg + "; check the file or pass allow_silent to drive a closed mouth")
        log.warning("%s; the mouth will stay closed", msg)
    return samples


def _dbfs(peak: float) -> float:
    return 20.0 * np.log10(max(peak, 1e-12))


def _decode(path: Path) -> np.ndarray:
    """A 16 kHz WAV (e.g. a subject's audio.wav) via the stdlib reader, so it loads exactly and
    without PyAV on the GPU machine; anything else through FFmpeg (synctalk.io.audio)."""
    from synctalk.io.audio import decode_audio, read_wav

    try:
        samples, rate = read_wav(path)
    except (InputError, wave.Error, EOFError, OSError, ValueError):
        rate = 0
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    samples, _info = decode_audio(path, sample_rate=SAMPLE_RATE)
    return np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
