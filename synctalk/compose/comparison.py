"""Side-by-side comparison frames for evaluation videos: ground truth | render | |difference| heat map.

Pure numpy/cv2 (OpenCV imported lazily: it is an optional dependency), RGB uint8 in and out; the
caller writes the frames to a video.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from synctalk.errors import InputError

DEFAULT_FULL_SCALE = 0.25  # a mean absolute channel error of 25% of the range maps to the hottest colour
DEFAULT_LABELS = ("ground truth", "render", "|difference|")


def difference_heatmap(gt: np.ndarray, render: np.ndarray, full_scale: float = DEFAULT_FULL_SCALE) -> np.ndarray:
    """RGB uint8 heat map (inferno) of mean_c |gt - render| / 255, saturating at `full_scale`.

    A fixed scale (rather than per-frame max) keeps colours comparable across frames and runs."""
    import cv2
    if gt.shape != render.shape or gt.dtype != np.uint8 or render.dtype != np.uint8 or gt.ndim != 3:
        raise InputError(f"comparison needs two RGB uint8 frames of one size, got {gt.shape} {gt.dtype} "
                         f"and {render.shape} {render.dtype}")
    error = np.abs(gt.astype(np.int16) - render.astype(np.int16)).mean(axis=2) / 255.0
    level = np.clip(error / full_scale, 0.0, 1.0)
    bgr = cv2.applyColorMap(np.rint(level * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _label(panel: np.ndarray, text: str) -> None:
    import cv2

    scale = max(panel.shape[0] / 640.0, 0.35)
    thickness = max(int(round(scale * 1.5)), 1)
    origin = (int(8 * scale) + 2, int(24 * scale) + 4)
    # A dark outline under the white text keeps it readable on any background.
    cv2.putText(panel, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(panel, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def side_by_side(gt: np.ndarray, render: np.ndarray, full_scale: float = DEFAULT_FULL_SCALE,
                 labels: tuple[str, str, str] | None = DEFAULT_LABELS) -> np.ndarray:
    """[H, 3W, 3] RGB uint8: gt | render | heat map; labels=None draws no text."""
    heat = difference_heatmap(gt, render, full_scale)
    panels = [gt.copy(), render.copy(), heat]
    if labels is not None:
        for panel, text in zip(panels, labels):
            _label(panel, text)
    return np.concatenate(panels, axis=1)


def comparison_frames(gts: Iterable[np.ndarray], renders: Iterable[np.ndarray],
                      full_scale: float = DEFAULT_FULL_SCALE,
                      labels: tuple[str, str, str] | None = DEFAULT_LABELS) -> Iterator[np.ndarray]:
    """Lazily pair two frame streams into side-by-side frames (stops at the shorter stream)."""
    for gt, render in zip(gts, renders):
        yield side_by_side(gt, render, full_scale, labels)
