"""Video frame reading for the subject's own files (frames.mp4, torso.mp4).

Prefers PyAV; falls back to OpenCV (the GPU machine has OpenCV but no PyAV). Frames are RGB uint8.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np


def iter_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [start, stop) of a constant-frame-rate video in decode order."""
    try:
        import av  # noqa: F401
    except ImportError:
        yield from _iter_cv2(path, start, stop)
        return
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                yield frame.to_ndarray(format="rgb24")


def _iter_cv2(path: str | os.PathLike, start: int, stop: int | None) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    try:
        i = 0
        while stop is None or i < stop:
            ok, bgr = cap.read()
            if not ok:
                break
            if i >= start:
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
