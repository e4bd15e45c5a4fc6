"""Stage `expressions`: 7 upper-face blendshape-like channels per frame, from mesh geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synctalk.prepare.context import StageContext


@dataclass(frozen=True)
class ExpressionConfig:
    smooth_window: int = 5   # Savitzky-Golay window (frames), as the original; 0 disables


def run(ctx: StageContext) -> dict[str, Any]:
    raise NotImplementedError("expressions stage")
