"""Compositing rendered frames: portrait paste-back (portrait.py) and comparison frames (comparison.py)."""

from synctalk.compose.comparison import comparison_frames, difference_heatmap, side_by_side
from synctalk.compose.portrait import (
    SourceCrop,
    blend_face,
    blend_face_torch,
    paste_into_source,
    paste_into_source_torch,
    seam_weights,
)

__all__ = [
    "SourceCrop",
    "blend_face",
    "blend_face_torch",
    "comparison_frames",
    "difference_heatmap",
    "paste_into_source",
    "paste_into_source_torch",
    "seam_weights",
    "side_by_side",
]
