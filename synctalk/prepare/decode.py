"""Stage `decode`: source video -> frames.mp4 (25 fps, square working size) + audio.wav (16 kHz mono)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext


@dataclass(frozen=True)
class DecodeConfig:
    size: int = 512            # working resolution (square)
    fps: float = 25.0
    sample_rate: int = 16000
    crop_scale: float = 2.6    # square crop side = crop_scale * face box size (when input > size)
    crf: int = 16              # H.264 quality of frames.mp4 / torso.mp4 (lower = better, bigger)
    x264_preset: str = "veryfast"


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("decode stage")
