"""Stage `background`: clean background plate + per-frame torso images (head removed, neck inpainted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext

TORSO_ALPHA = "torso_alpha.npz"  # per-frame torso alpha (maskcodec, 0/255): neck + torso + inpainted neck


@dataclass(frozen=True)
class BackgroundConfig:
    sample_every: int = 10     # frames sampled for the background plate
    neck_inpaint_px: int = 53  # how far the neck is extended upward under the removed head


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("background stage")
