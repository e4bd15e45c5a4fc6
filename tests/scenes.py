"""Synthetic camera set-ups shared by the NeRF and render tests."""

from __future__ import annotations

import math

import numpy as np


def look_at_origin(angle: float, distance: float = 2.5) -> np.ndarray:
    """OpenGL c2w of a camera on a circle in the xz plane looking at the origin."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = rot @ np.array([0, 0, distance])
    return pose
