"""Per-video-frame mel windows with the original's indexing and padding.

The original (SyncTalk ``AudDataset`` + provider) cuts window j from mel frames
[floor(80*j/25), +16), clamping the last ones to end at the final mel frame, makes
floor((T_mel - 16) / 80 * 25) + 2 of them, then pads the encoded features with 2 copies of the first
and last one. After that padding, index i is the 0.2-s window centred on video frame i (its centre is
40*i + 20 ms, the frame's own centre). We reproduce exactly that index -> window map, but return
exactly ``n_frames`` windows (the original's padded count is n_frames + 1 for a clip of whole frames).
"""

from __future__ import annotations

import numpy as np
import torch

from synctalk.audio import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synctalk.audio.mel import MEL_FPS

WINDOW_MELS = 16   # 0.2 s = 5 video frames
PAD_COPIES = 2     # the original repeats the first/last feature twice


def n_video_frames(num_samples: int) -> int:
    """Video frames covered by ``num_samples`` of 16 kHz audio (25 x duration, rounded)."""
    return int(round(num_samples / SAMPLES_PER_FRAME))


def original_window_count(n_mel: int) -> int:
    """How many windows the original's AudDataset yields for a mel of ``n_mel`` frames (before padding)."""
    return int((n_mel - WINDOW_MELS) / MEL_FPS * VIDEO_FPS) + 2


def original_window_start(j: int, n_mel: int) -> int:
    """Mel start of the original's (unpadded) window j, clamped so the window fits."""
    start = int(MEL_FPS * (j / float(VIDEO_FPS)))
    return min(start, n_mel - WINDOW_MELS)


def frame_window_starts(n_frames: int, n_mel: int) -> np.ndarray:
    """Mel start of the window for each video frame 0..n_frames-1 (after the 2-copy padding)."""
    if n_mel < WINDOW_MELS:
        raise ValueError(f"need at least {WINDOW_MELS} mel frames (0.2 s of audio), got {n_mel}")
    count = original_window_count(n_mel)
    j = np.clip(np.arange(n_frames) - PAD_COPIES, 0, count - 1)
    starts = np.minimum((MEL_FPS * j / float(VIDEO_FPS)).astype(np.int64), n_mel - WINDOW_MELS)
    return starts


def frame_windows(mel: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
    """[n_frames, 1, 80, 16] mel windows for each video frame; ``n_frames`` defaults to the audio's."""
    n_mel = mel.shape[-1]
    if n_frames is None:
        # Invert T = 1 + samples // 200 to the nearest whole number of video frames.
        n_frames = n_video_frames((n_mel - 1) * (SAMPLE_RATE // int(MEL_FPS)))
    starts = torch.as_tensor(frame_window_starts(n_frames, n_mel), device=mel.device)
    idx = starts[:, None] + torch.arange(WINDOW_MELS, device=mel.device)[None, :]
    return mel[:, idx].permute(1, 0, 2).unsqueeze(1).contiguous()
