"""Streaming windows equal the offline ones for every chunk size from 40 to 200 ms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synctalk.audio.mel import melspectrogram
from synctalk.audio.streaming import StreamingMelWindows, stream_windows
from synctalk.audio.windows import frame_windows


@pytest.mark.parametrize("chunk_ms", [40, 75, 120, 200])
def test_streaming_equals_offline(chunk_ms: int):
    rng = np.random.default_rng(chunk_ms)
    t = np.arange(16000 * 3) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    offline = frame_windows(melspectrogram(wav))
    streamed = stream_windows(wav, 16 * chunk_ms)
    assert streamed.shape == offline.shape == (75, 1, 80, 16)
    torch.testing.assert_close(streamed, offline, atol=1e-4, rtol=0)


def test_streaming_emits_with_bounded_latency():
    wav = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    s = StreamingMelWindows()
    emitted = 0
    for i in range(0, len(wav), 640):  # 40-ms chunks
        emitted += len(s.push(wav[i:i + 640]))
        frames_heard = (i + 640) // 640
        # Steady state: frame k is final 92.5 ms (< 3 frames) after its audio ends. Start-up: the first
        # window needs 212.5 ms of audio (its 0.2-s span plus half an STFT window).
        assert emitted >= frames_heard - (3 if frames_heard > 5 else 5)
    assert emitted + len(s.flush()) == 50
