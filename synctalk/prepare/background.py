"""Stage `background`: clean background plate + per-frame torso images (head removed, neck inpainted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext



@dataclass(frozen=True)
class BackgroundConfig:
    sample_every: int = 10     # frames sampled for the background plate
    neck_inpaint_px: int = 53  # how far the neck is extended upward under the removed head


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("background stage")
