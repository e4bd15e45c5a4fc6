"""Stage `landmarks`: mediapipe face mesh (478 points, tracking) + selfie person mask per frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext



@dataclass(frozen=True)
class LandmarkConfig:
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_gap_frames: int = 12          # longest run of face-less frames that is interpolated
    max_missing_fraction: float = 0.05  # refuse the video above this fraction of face-less frames


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("landmarks stage")
