"""PrepareConfig: every setting of `synctalk prepare`, grouped by stage, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from synctalk.errors import SyncTalkError
from synctalk.prepare.background import BackgroundConfig
from synctalk.prepare.decode import DecodeConfig
from synctalk.prepare.expressions import ExpressionConfig
from synctalk.prepare.landmarks import LandmarkConfig
from synctalk.prepare.parsing import ParsingConfig
from synctalk.prepare.pose import PoseConfig


@dataclass(frozen=True)
class PrepareConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    parsing: ParsingConfig = field(default_factory=ParsingConfig)
    expressions: ExpressionConfig = field(default_factory=ExpressionConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    # Last 1/test_denominator of the frames is the test split (the original uses 11).
    test_denominator: int = 11


def _default() -> PrepareConfig:
    return PrepareConfig()


def _fast() -> PrepareConfig:
    """Fewer keypoint tracks (quicker tracking and bundle adjustment), for trying footage out."""
    c = PrepareConfig()
    return dataclasses.replace(c, pose=dataclasses.replace(c.pose, max_tracks=60))


PRESETS = {"default": _default, "fast": _fast}


def preset(name: str) -> PrepareConfig:
    if name not in PRESETS:
        raise SyncTalkError(f"unknown prepare preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
