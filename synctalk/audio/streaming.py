"""Streaming per-frame mel windows: push audio chunks (e.g. 40-200 ms), get each video frame's window
as soon as it is final, identical to the offline ``frame_windows(melspectrogram(wav))``.

Latency: frame i's window ends at mel frame floor(3.2*(i-2)) + 15, whose STFT needs samples up to about
640*i + 2120, i.e. ~1480 samples = 92.5 ms after frame i's own audio ends, plus up to one chunk of
buffering (measured: 3 frames behind with 40-ms chunks). Start-up: the first window needs 212.5 ms
of audio. The last ~3 frames (end clamping and the right reflect padding) are only final at ``flush``.
The raw signal is kept for ``flush`` (64 KB per second of audio).
"""

from __future__ import annotations

import numpy as np
import torch

from synctalk.audio.mel import HOP, N_FFT, log_mel_of_padded, melspectrogram, preemphasis
from synctalk.audio.windows import WINDOW_MELS, frame_window_starts, frame_windows, n_video_frames

LATENCY_MS = 92.5


class StreamingMelWindows:
    def __init__(self) -> None:
        self._raw = torch.zeros(0)
        self._mels: list[torch.Tensor] = []   # final mel frames, in order
        self._n_mel_final = 0
        self._emitted = 0

    def push(self, chunk: np.ndarray) -> torch.Tensor:
        """Add 16 kHz samples; returns [k, 1, 80, 16] windows of the frames that became final."""
        self._raw = torch.cat([self._raw, torch.as_tensor(np.asarray(chunk, np.float32)).reshape(-1)])
        n = self._raw.numel()
        if n <= N_FFT // 2:
            return torch.zeros(0, 1, 80, WINDOW_MELS)
        # Mel frame t is final once samples up to 200t + 400 exist (its right half-window).
        last_final = (n - N_FFT // 2) // HOP
        if last_final >= self._n_mel_final:
            t0, t1 = self._n_mel_final, last_final + 1
            lo = HOP * t0 - N_FFT // 2       # first raw sample of frame t0 (negative = left reflection)
            p_lo = max(lo - 1, 0)            # one extra sample so pre-emphasis sees its predecessor
            y = preemphasis(self._raw[p_lo: HOP * (t1 - 1) + N_FFT // 2])
            if p_lo > 0:
                y = y[1:]
            if lo < 0:  # frames 0/1: the offline path reflects the signal's start
                y = torch.cat([torch.flip(preemphasis(self._raw[: N_FFT // 2 + 1])[1:], [0])[: -lo], y])
            self._mels.append(log_mel_of_padded(y))
            self._n_mel_final = t1
        return self._emit(final=False)

    def _emit(self, final: bool, n_frames: int | None = None) -> torch.Tensor:
        mel = torch.cat(self._mels, dim=1) if self._mels else torch.zeros(80, 0)
        out = []
        i = self._emitted
        while not final:
            start = int(80 * max(i - 2, 0) / 25)
            if start + WINDOW_MELS > self._n_mel_final:
                break
            out.append(mel[:, start:start + WINDOW_MELS])
            i += 1
        if final:
            full = melspectrogram(self._raw)
            starts = frame_window_starts(n_frames, full.shape[-1])
            out = [full[:, s:s + WINDOW_MELS] for s in starts[i:]]
            i = n_frames
        self._emitted = i
        return torch.stack(out).unsqueeze(1) if out else torch.zeros(0, 1, 80, WINDOW_MELS)

    def flush(self, n_frames: int | None = None) -> torch.Tensor:
        """End of stream: the remaining frames (n_frames defaults to 25 x duration)."""
        n_frames = n_video_frames(self._raw.numel()) if n_frames is None else n_frames
        return self._emit(final=True, n_frames=n_frames)


def stream_windows(wav: np.ndarray, chunk_samples: int) -> torch.Tensor:
    """Convenience: feed ``wav`` in chunks and collect every window (for tests and benchmarks)."""
    s = StreamingMelWindows()
    parts = [s.push(wav[i:i + chunk_samples]) for i in range(0, len(wav), chunk_samples)]
    parts.append(s.flush())
    return torch.cat(parts)


__all__ = ["LATENCY_MS", "StreamingMelWindows", "stream_windows", "frame_windows"]
