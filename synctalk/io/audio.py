"""Audio I/O: decode any audio (or a video's audio track) to mono float32, read/write PCM16 WAV.

The small public API, used by the decode stage and the driving-audio loader:

- ``decode_audio(path, sample_rate=16000) -> (samples, info)``: any file PyAV opens (wav, mp3, flac,
  m4a/aac, ogg, the audio track of a video) -> float32 mono in [-1, 1] at ``sample_rate``.
  ``info`` = {"codec", "source_rate", "source_channels", "sample_rate", "seconds", "start_seconds"};
  ``start_seconds`` is the presentation time of the first sample in the container, so a caller can
  align the audio to a video stream that starts at a different time.
- ``write_wav(path, samples, sample_rate)``: atomic PCM16 mono WAV (stdlib ``wave``).
- ``read_wav(path) -> (samples, sample_rate)``: PCM 8/16/24/32-bit WAV -> float32 mono in [-1, 1].
- ``loudness(samples) -> (rms_dbfs, peak)``.

All failures a user can cause (missing file, not media, no audio stream, corrupt data) raise
``InputError`` with a one-line message. Only ``decode_audio`` needs PyAV; the WAV helpers need numpy.
"""

from __future__ import annotations

import math
import os
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from synctalk.errors import InputError
from synctalk.io.atomic import atomic_path
from synctalk.io.video import ffmpeg_reason, open_media

# Below this RMS a track is treated as silent (digital silence or a muted mic); -60 dBFS is well
# under any speech recording but above dither / codec noise floors.
SILENT_RMS_DBFS = -60.0
SILENT_PEAK = 1e-3


def decode_audio(path: str | os.PathLike, sample_rate: int = 16000) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the first audio stream of ``path`` to float32 mono at ``sample_rate`` (see module doc)."""
    import av

    path = Path(path)
    container = open_media(path, "audio")
    with container:
        if not container.streams.audio:
            raise InputError(f"{path.name} has no audio track")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        info: dict[str, Any] = {
            "codec": ctx.name,
            "source_rate": int(ctx.sample_rate or 0),
            "source_channels": int(ctx.channels or 0),
            "sample_rate": int(sample_rate),
        }
        # Resample per channel (planar float) and average the channels ourselves: libswresample's
        # stereo->mono matrix sums with 1/sqrt(2) gains, which lifts correlated speech by +3 dB and
        # can clip a loud recording; a plain mean keeps the level of a centred voice.
        resampler = av.AudioResampler(format="fltp", rate=int(sample_rate))
        chunks: list[np.ndarray] = []
        start_seconds: float | None = None
        try:
            for frame in container.decode(stream):
                if start_seconds is None and frame.pts is not None and frame.time_base is not None:
                    start_seconds = float(Fraction(frame.pts) * frame.time_base)
                for out in resampler.resample(frame):
                    chunks.append(_downmix(out.to_ndarray()))
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(_downmix(out.to_ndarray()))
        except av.FFmpegError as e:
            raise InputError(f"{path.name}: audio track is corrupt ({ffmpeg_reason(e)})") from None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise InputError(f"{path.name}: audio track decodes to no samples")
    np.clip(samples, -1.0, 1.0, out=samples)
    info["seconds"] = samples.size / float(sample_rate)
    info["start_seconds"] = start_seconds if start_seconds is not None else 0.0
    return samples, info


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as a PCM16 WAV, atomically (values outside are clipped)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    # Round to nearest (not truncate) so a float -> PCM16 -> float round trip is within 1/65536.
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    with atomic_path(path, suffix=".wav") as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a PCM WAV (8/16/24/32-bit integer, any channel count) -> (float32 mono, sample_rate)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise InputError(f"{path.name} is not a PCM WAV file ({e}); use decode_audio for other formats") from None
    samples = _pcm_to_float(raw, width)
    usable = (samples.size // channels) * channels  # a truncated file may end mid-frame
    samples = samples[:usable].reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples.astype(np.float32, copy=False), int(rate)


def loudness(samples: np.ndarray) -> tuple[float, float]:
    """(RMS in dBFS, absolute peak) of float samples in [-1, 1]; RMS of silence is floored at -120 dB."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return -120.0, 0.0
    rms = math.sqrt(float(np.mean(x * x)))
    return max(-120.0, 20.0 * math.log10(max(rms, 1e-6))), float(np.max(np.abs(x)))


def is_silent(rms_dbfs: float, peak: float) -> bool:
    return rms_dbfs < SILENT_RMS_DBFS or peak < SILENT_PEAK


def fit_length(samples: np.ndarray, n_samples: int, offset: int = 0) -> np.ndarray:
    """Shift by ``offset`` samples (positive: pad zeros in front; negative: drop the first samples),
    then trim or zero-pad the end to exactly ``n_samples``."""
    if offset > 0:
        samples = np.concatenate([np.zeros(offset, np.float32), samples])
    elif offset < 0:
        samples = samples[-offset:]
    if samples.size >= n_samples:
        return samples[:n_samples]
    return np.concatenate([samples, np.zeros(n_samples - samples.size, np.float32)])


def _downmix(planar: np.ndarray) -> np.ndarray:
    """[channels, n] planar float -> [n] mono mean."""
    return planar.mean(axis=0, dtype=np.float32) if planar.shape[0] > 1 else planar[0]


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:  # 24-bit: widen each little-endian triplet into the top of an int32
        b = np.frombuffer(raw[: len(raw) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        v = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)
        return v.astype(np.float32) / 2147483648.0
    if width == 4:
        return np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    raise InputError(f"unsupported WAV sample width {width * 8} bits")

