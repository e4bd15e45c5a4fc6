"""Stage `parsing`: per-frame label map (face/hair/neck/torso/background) + soft portrait face mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext


@dataclass(frozen=True)
class ParsingConfig:
    chin_extension_px: int = 5        # portrait mask: extend the lower face contour down (as the original)
    portrait_feather_px: int = 9      # portrait mask: Gaussian feather width


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("parsing stage")
