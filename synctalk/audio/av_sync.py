"""Landmark-only lip-sync score: needs no SyncNet weights (none are available offline).

A mouth signal per video frame is cross-correlated (Pearson, over the overlapping frames) with an audio
signal per video frame for offsets -15..+15 frames. ``offset > 0`` means the audio is LATE: the sound
matching video frame t is at audio frame t + offset. Two signal pairs (``METHODS``):

- ``band`` (default): outer-lip height (landmarks 0-17 over face height) against the log energy of
  800-3000 Hz (floored 50 dB under the clip's loudest frame). The band keeps the vowel formants, which
  grow with the mouth opening, and drops what sounds with the lips (nearly) closed: voicing and nasal
  murmur (/m n/) below it, sibilants (/s f/) above it.
- ``rms``: inner-lip gap (13-14) against the frame's RMS, the first version, kept to compare numbers.

On 8-s excerpts of real footage the best offset lands within +-2 frames of the truth (0, or a known
shift of +-5/+-10) in 100 % of excerpts with ``band`` against 89.3 % (71-s CNN anchor) and 76.6 %
(German anchor) with ``rms``; ``benchmarks/bench_av_sync.py`` and BENCHMARKS.md "Offline lip-sync score"
have the table for 3-13 s. Speech activity comes from silero-vad (its model ships in the wheel); frames
well inside non-speech stretches should show a closed mouth, which gives the silent-frames-closed
fraction (inner-lip gap under CLOSED_OPENING). Real speakers often breathe through parted lips: the 71-s
anchor itself has a closed mouth in 35 % of its silent frames. Clips under MIN_FRAMES are refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from synctalk.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from synctalk.audio.mouth import lip_height, mouth_opening
from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("audio.av_sync")

MAX_OFFSET = 15
MIN_FRAMES = 4 * MAX_OFFSET       # below this the overlap is too short for a meaningful correlation
CLOSED_OPENING = 0.012            # inner-lip gap / face height under which the mouth counts as closed
SILENCE_MARGIN = 2                # frames of non-speech next to speech are transitions, not silence
METHODS = ("band", "rms")         # see the module docstring
SPEECH_BAND_HZ = (800.0, 3000.0)  # the "band" method's audio band
ENERGY_FLOOR_DB = 50.0            # band energy is floored this far under the loudest frame (digital silence)
# Shortest footage whose own offset is measured: on every 6-s excerpt of the two real anchors the band
# method found the offset within +-2 frames (BENCHMARKS.md "Offline lip-sync score").
FOOTAGE_MIN_FRAMES = 150
FOOTAGE_MIN_R = 0.15              # a peak under this is no evidence of any offset


@dataclass(frozen=True)
class SyncScore:
    best_offset: int                 # frames; > 0 = audio late
    peak_correlation: float          # Pearson r at the best offset
    correlation_margin: float        # peak minus the median r over all offsets (a confidence)
    silent_frames_closed: float | None  # fraction of silent frames with the mouth closed (None: no silence)
    silent_frames: int
    speech_fraction: float
    frames: int
    correlations: list[float]        # r for offsets -MAX_OFFSET..MAX_OFFSET
    method: str = "band"             # the signal pair that was correlated (METHODS)

    def in_sync(self, tolerance: int = 1) -> bool:
        return abs(self.best_offset) <= tolerance

    def to_json(self) -> dict:
        return asdict(self)


def frame_samples(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """[n_frames, 640] float64: each video frame's 40 ms of audio (zero-padded at the end)."""
    x = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float64)
    m = min(len(wav), len(x))
    x[:m] = wav[:m]
    return x.reshape(n_frames, SAMPLES_PER_FRAME)


def frame_rms(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """[n_frames] RMS of each video frame's 40 ms of audio (zero-padded at the end)."""
    return np.sqrt(np.mean(frame_samples(wav, n_frames) ** 2, axis=1))


def frame_band_energy_db(wav: np.ndarray, n_frames: int, band_hz: tuple[float, float] = SPEECH_BAND_HZ,
                         floor_db: float = ENERGY_FLOOR_DB) -> np.ndarray:
    """[n_frames] energy (dB) of each video frame's 40 ms of audio within ``band_hz`` (Hann-windowed FFT,
    25-Hz bins), floored ``floor_db`` under the loudest frame so silence does not dominate the log."""
    spec = np.abs(np.fft.rfft(frame_samples(wav, n_frames) * np.hanning(SAMPLES_PER_FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(SAMPLES_PER_FRAME, 1 / SAMPLE_RATE)
    energy = spec[:, (freqs >= band_hz[0]) & (freqs < band_hz[1])].sum(axis=1)
    floor = max(float(energy.max()), 1e-20) * 10 ** (-floor_db / 10)
    return 10 * np.log10(np.maximum(energy, floor))


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown sync-score method {method!r}; choose from {', '.join(METHODS)}")


def sync_signals(lms: np.ndarray, wav: np.ndarray, method: str = "band") -> tuple[np.ndarray, np.ndarray]:
    """(mouth signal, audio signal), one value per video frame, that ``score_sync`` correlates."""
    check_method(method)
    if method == "band":
        return lip_height(lms), frame_band_energy_db(wav, len(lms))
    return mouth_opening(lms), frame_rms(wav, len(lms))


def speech_frames(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """[n_frames] bool: silero-vad speech activity per video frame."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad()
    stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), model,
                                   sampling_rate=SAMPLE_RATE)
    speech = np.zeros(n_frames, bool)
    for s in stamps:
        speech[s["start"] // SAMPLES_PER_FRAME:-(-s["end"] // SAMPLES_PER_FRAME)] = True
    return speech


def silent_frames(speech: np.ndarray, margin: int = SILENCE_MARGIN) -> np.ndarray:
    """[N] bool: non-speech frames at least ``margin`` frames from any speech frame (the frames next to
    speech are transitions, not silence)."""
    near_speech = np.convolve(np.asarray(speech).astype(int), np.ones(2 * margin + 1, int), mode="same") > 0
    return ~near_speech


def offset_correlations(video_signal: np.ndarray, audio_signal: np.ndarray, max_offset: int = MAX_OFFSET) -> np.ndarray:
    """Pearson r of video[t] with audio[t + k] for k = -max_offset..max_offset (overlap only)."""
    n = min(len(video_signal), len(audio_signal))
    v, a = np.asarray(video_signal[:n], np.float64), np.asarray(audio_signal[:n], np.float64)
    out = np.zeros(2 * max_offset + 1)
    for i, k in enumerate(range(-max_offset, max_offset + 1)):
        x, y = (v[: n - k], a[k:]) if k >= 0 else (v[-k:], a[: n + k])
        if x.std() < 1e-12 or y.std() < 1e-12:
            out[i] = 0.0  # a constant signal correlates with nothing
        else:
            out[i] = float(np.corrcoef(x, y)[0, 1])
    return out


def score_sync(lms: np.ndarray, wav: np.ndarray, speech: np.ndarray | None = None,
               max_offset: int = MAX_OFFSET, method: str = "band") -> SyncScore:
    """Score landmarks [N,478,3] (25 fps) against 16 kHz ``wav``; ``speech`` defaults to silero-vad."""
    n = len(lms)
    if n < MIN_FRAMES:
        raise InputError(f"the video has {n} frames; at least {MIN_FRAMES} ({MIN_FRAMES / 25:.1f} s) are needed")
    mouth_signal, audio_signal = sync_signals(lms, wav, method)
    corr = offset_correlations(mouth_signal, audio_signal, max_offset)
    best = int(np.argmax(corr))
    if speech is None:
        speech = speech_frames(wav, n)
    silent = silent_frames(speech)
    opening = mouth_opening(lms)
    closed = float(np.mean(opening[silent] < CLOSED_OPENING)) if silent.any() else None
    return SyncScore(best_offset=best - max_offset, peak_correlation=float(corr[best]),
                     correlation_margin=float(corr[best] - np.median(corr)), silent_frames_closed=closed,
                     silent_frames=int(silent.sum()), speech_fraction=float(speech.mean()), frames=n,
                     correlations=[float(c) for c in corr], method=method)


def footage_offset(lms: np.ndarray, wav: np.ndarray) -> dict:
    """The audio/video offset of a subject's own footage by the band method: {"frames", "r", "margin"},
    or {"unavailable": why} when the clip is too short or the peak too weak to mean anything."""
    n = len(lms)
    if n < FOOTAGE_MIN_FRAMES:
        return {"unavailable": f"{n} frames; the offset is measured on at least {FOOTAGE_MIN_FRAMES} (6 s)"}
    corr = offset_correlations(*sync_signals(lms, wav, "band"))
    best = int(np.argmax(corr))
    if corr[best] < FOOTAGE_MIN_R:
        return {"unavailable": f"no clear lip/audio correlation (peak r {corr[best]:.2f})"}
    return {"frames": best - MAX_OFFSET, "r": round(float(corr[best]), 3),
            "margin": round(float(corr[best] - np.median(corr)), 3)}


def load_talking_video(video: str | os.PathLike, audio: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(face-mesh landmarks [N,478,3], 16 kHz audio) of a 25-fps talking video, checked for sync scoring:
    its own audio track unless ``audio`` is given."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.mouth import face_mesh_landmarks

    wav = load_driving_audio(audio if audio is not None else video)
    lms, detected, fps = face_mesh_landmarks(video)
    if abs(fps - 25) > 0.01:
        raise InputError(f"{video} is {fps:g} fps; sync scores expect 25 fps video (the frame offset unit)")
    if detected.mean() < 0.5:
        raise InputError(f"a face was found in only {100 * detected.mean():.0f} % of the frames of {video}")
    return lms, wav


def score_video(video: str | os.PathLike, audio: str | os.PathLike | None = None,
                method: str = "band") -> SyncScore:
    """Run face mesh on ``video`` and score it against its own audio track or ``audio``."""
    check_method(method)   # before the slow face mesh
    return score_sync(*load_talking_video(video, audio), method=method)
