"""One fixed square head crop for a whole video (used by `decode` when the source is not size x size).

The crop is chosen once, from a robust (median) face box over frames sampled across the video, so
the working frames never jitter; a render can be pasted back into the original frame with the
published ``crop = {x0, y0, side, source_width, source_height}`` (source pixels).

Placement is calibrated on the original SyncTalk-style 512x512 talking-head crops (the anchor, the
German anchor and May clips in /work/shared/data): with MediaPipe's full-range face detector the face
box is about 1/1.9 of the crop side (1/1.87-1/2.0) and its centre sits at 0.55-0.58 of the side from
the top. That is, the face box centre is slightly *below* the middle, because the box spans brows to
chin and the crop keeps the whole forehead and hair above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("prepare.crop")


@dataclass(frozen=True)
class FaceBox:
    """A face box in source pixels (centre and size)."""

    cx: float
    cy: float
    width: float
    height: float

    @property
    def size(self) -> float:
        return max(self.width, self.height)


@dataclass(frozen=True)
class Crop:
    x0: int
    y0: int
    side: int
    source_width: int
    source_height: int

    def to_json(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "side": self.side,
                "source_width": self.source_width, "source_height": self.source_height}

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[self.y0:self.y0 + self.side, self.x0:self.x0 + self.side]


class FaceDetector:
    """MediaPipe face detection, full-range model first (far and near faces), short-range as fallback.

    Returns the most prominent face (largest score x area) of an RGB frame, or None."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp

        fd = mp.solutions.face_detection
        self._models = [fd.FaceDetection(model_selection=1, min_detection_confidence=min_confidence),
                        fd.FaceDetection(model_selection=0, min_detection_confidence=min_confidence)]

    def detect(self, rgb: np.ndarray) -> FaceBox | None:
        h, w = rgb.shape[:2]
        for model in self._models:
            result = model.process(np.ascontiguousarray(rgb))
            if not result.detections:
                continue
            best, best_key = None, -1.0
            for d in result.detections:
                b = d.location_data.relative_bounding_box
                key = float(d.score[0]) * b.width * b.height
                if key > best_key:
                    best, best_key = b, key
            return FaceBox(cx=(best.xmin + best.width / 2) * w, cy=(best.ymin + best.height / 2) * h,
                           width=best.width * w, height=best.height * h)
        return None

    def close(self) -> None:
        for model in self._models:
            model.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def median_face(boxes: list[FaceBox]) -> FaceBox:
    """Per-coordinate median: robust to a few frames where the detector picked a wrong face."""
    a = np.array([[b.cx, b.cy, b.width, b.height] for b in boxes], dtype=np.float64)
    cx, cy, w, h = np.median(a, axis=0)
    return FaceBox(float(cx), float(cy), float(w), float(h))


def choose_crop(face: FaceBox, source_width: int, source_height: int, crop_scale: float,
                face_center_y: float) -> Crop:
    """Square crop of side crop_scale * face size (at most the short side), centred on the face
    horizontally, with the face centre at ``face_center_y`` * side from the top, kept inside the frame."""
    short = min(source_width, source_height)
    side = int(round(min(crop_scale * face.size, short)))
    side = max(2, side - side % 2)
    x0 = int(round(face.cx - side / 2))
    y0 = int(round(face.cy - face_center_y * side))
    x0 = min(max(x0, 0), source_width - side)
    y0 = min(max(y0, 0), source_height - side)
    return Crop(x0=x0, y0=y0, side=side, source_width=source_width, source_height=source_height)


def crop_from_samples(samples: list[np.ndarray], source_width: int, source_height: int, crop_scale: float,
                      face_center_y: float, source_name: str) -> tuple[Crop, dict[str, Any]]:
    """Detect the face on sampled RGB frames and choose the crop; InputError if no frame has a face."""
    boxes: list[FaceBox] = []
    with FaceDetector() as detector:
        for rgb in samples:
            box = detector.detect(rgb)
            if box is not None:
                boxes.append(box)
    if not boxes:
        raise InputError(f"{source_name}: no face found in {len(samples)} frames sampled across the video; "
                         "synctalk needs one person facing the camera")
    if len(boxes) < len(samples) // 2:
        log.warning("a face was found in only %d of %d sampled frames; the crop may be off",
                    len(boxes), len(samples))
    face = median_face(boxes)
    crop = choose_crop(face, source_width, source_height, crop_scale, face_center_y)
    stats = {"face_box": [round(face.cx - face.width / 2, 1), round(face.cy - face.height / 2, 1),
                          round(face.width, 1), round(face.height, 1)],
             "face_frames": len(boxes), "sampled_frames": len(samples)}
    return crop, stats
