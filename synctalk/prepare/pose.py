"""Stage `pose` (Head-Sync Stabilizer): rigid head pose, flow keypoint tracks, bundle adjustment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext


@dataclass(frozen=True)
class PoseConfig:
    focal_min: float = 300.0
    focal_max: float = 3000.0
    ba_iters_points: int = 200
    ba_iters_joint: int = 600


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("pose stage")
