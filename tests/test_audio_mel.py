"""The torch mel against an independent float64 numpy reference, and the per-video-frame windowing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synctalk.audio.mel import melspectrogram
from synctalk.audio.windows import (
    WINDOW_MELS, frame_window_starts, frame_windows, n_video_frames, original_window_count,
)


def _reference_mel(x: np.ndarray) -> np.ndarray:
    """Wav2Lip hparams written out directly: loops over frames and filters, float64 throughout."""
    sr, n_fft, hop = 16000, 800, 200
    x = x.astype(np.float64)
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    y = np.pad(y, n_fft // 2, mode="reflect")
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    n_frames = 1 + (len(y) - n_fft) // hop
    mag = np.stack([np.abs(np.fft.rfft(window * y[t * hop:t * hop + n_fft])) for t in range(n_frames)], axis=1)

    def hz_to_mel(f: float) -> float:  # Slaney: 3 mels per 200 Hz below 1 kHz, log above
        return f / (200 / 3) if f < 1000 else 15 + np.log(f / 1000) / (np.log(6.4) / 27)

    def mel_to_hz(m: float) -> float:
        return m * (200 / 3) if m < 15 else 1000 * np.exp((m - 15) * np.log(6.4) / 27)

    lo, hi = hz_to_mel(55.0), hz_to_mel(7600.0)
    edges = [mel_to_hz(lo + (hi - lo) * k / 81) for k in range(82)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((80, n_fft // 2 + 1))
    for m in range(80):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for b, f in enumerate(freqs):
            if left < f <= centre:
                fb[m, b] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[m, b] = (right - f) / (right - centre)
        fb[m] *= 2.0 / (right - left)
    db = 20 * np.log10(np.maximum(1e-5, fb @ mag)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_matches_float64_reference():
    rng = np.random.default_rng(0)
    t = np.arange(int(1.37 * 16000)) / 16000
    x = (0.4 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    x[:3000] *= 1e-4  # a quiet stretch exercises the -100 dB floor and the clipping
    ours = melspectrogram(x).numpy()
    ref = _reference_mel(x)
    assert ours.shape == ref.shape == (80, 1 + x.size // 200)
    assert ours.dtype == np.float32
    # float32 STFT vs float64: normalised units are 0.08 per dB, so 2e-3 is 0.025 dB.
    assert np.max(np.abs(ours - ref)) < 2e-3
    assert ref.min() == -4.0  # the reference really hit the floor, so the clip path was compared


def test_window_indexing_matches_original():
    n_mel = 1 + 16000 * 3 // 200  # 3 s
    count = original_window_count(n_mel)
    assert count == int((n_mel - 16) / 80 * 25) + 2
    starts = frame_window_starts(80, n_mel)
    # Padded index i holds original window i-2: frames 0..2 share window 0, then floor(80*(i-2)/25).
    assert list(starts[:6]) == [0, 0, 0, 3, 6, 9]
    assert starts[10] == int(80 * 8 / 25)
    # The last windows are clamped to end on the last mel frame.
    assert starts.max() == n_mel - WINDOW_MELS
    # Window centre (in ms) sits on the frame centre 40*i + 20 ms for unclamped frames.
    for i in range(3, 60):
        centre_ms = (starts[i] + WINDOW_MELS / 2) * 12.5
        assert abs(centre_ms - (40 * i + 20)) <= 12.5


def test_frame_windows_shape_and_content():
    mel = torch.arange(80 * 101, dtype=torch.float32).reshape(80, 101)
    w = frame_windows(mel, 25)
    assert w.shape == (25, 1, 80, 16)
    starts = frame_window_starts(25, 101)
    for i in (0, 7, 24):
        assert torch.equal(w[i, 0], mel[:, starts[i]:starts[i] + 16])


def test_one_feature_per_video_frame_of_real_clip(shared_data: Path):
    from synctalk.audio.load import load_driving_audio

    wav = load_driving_audio(shared_data / "may_real3dportrait_5s.mp4")
    n_frames = 125  # the clip is 5.0 s at 25 fps (README of the shared data)
    # A prepared audio.wav is exactly n_frames/25 s; trim the decoder's codec padding to that.
    wav = wav[: n_frames * 640]
    assert n_video_frames(wav.size) == n_frames
    windows = frame_windows(melspectrogram(wav))
    assert windows.shape[0] == n_frames
    # The original's padded count is n_frames + 1 for whole-frame audio; we keep its first n_frames.
    assert original_window_count(1 + wav.size // 200) + 4 == n_frames + 1
