"""Mouth geometry and mouth crops from MediaPipe face-mesh landmarks ([N, 478, 3] pixels).

Used by the sync model (crops) and by the landmark-only lip-sync score (opening). The face scale is the
outer-eye-corner distance, which does not change when the mouth opens, so crops have a stable size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from synctalk.errors import InputError
from synctalk.log import get_logger, progress

log = get_logger("audio.mouth")

UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
UPPER_OUTER_LIP, LOWER_OUTER_LIP = 0, 17
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263   # subject's right / left outer eye corners
FOREHEAD, CHIN = 10, 152

CROP_H, CROP_W = 48, 96
CROP_WIDTH_OVER_EYES = 1.0   # crop width = outer-eye distance: the lips plus a margin for the jaw corners
# Crop regions for the sync model: (height px, width px, centre moved down from the lips' centre, in
# outer-eye distances). All share the lips crop's scale (96 px = one eye distance). "jaw" reaches from
# a quarter eye distance above the lips' centre to ~0.66 below it: the chin (~0.5 below) even with the
# mouth wide open, because at 48x96 the jaw's travel is easier to see than the lips' own shape.
CROP_REGIONS: dict[str, tuple[int, int, float]] = {"lips": (CROP_H, CROP_W, 0.0), "jaw": (88, CROP_W, 0.2)}


def face_size(lms: np.ndarray) -> np.ndarray:
    """[N] face height (forehead to chin) in pixels: the normaliser of the original lip-opening metric."""
    return np.linalg.norm(lms[:, FOREHEAD, :2] - lms[:, CHIN, :2], axis=-1)


def mouth_opening(lms: np.ndarray) -> np.ndarray:
    """[N] inner-lip gap (landmarks 13-14) over face size; ~0 closed, ~0.1+ wide open."""
    gap = np.linalg.norm(lms[:, UPPER_INNER_LIP, :2] - lms[:, LOWER_INNER_LIP, :2], axis=-1)
    return (gap / np.maximum(face_size(lms), 1e-6)).astype(np.float32)


def lip_height(lms: np.ndarray) -> np.ndarray:
    """[N] outer-lip height (landmarks 0-17, top of the upper lip to the bottom of the lower lip) over face
    size. Unlike the inner gap it keeps moving while the lips stay sealed (the jaw still drops, the lips
    still round and spread), so it tracks articulation through /m b p/ and half-open vowels too."""
    h = np.linalg.norm(lms[:, UPPER_OUTER_LIP, :2] - lms[:, LOWER_OUTER_LIP, :2], axis=-1)
    return (h / np.maximum(face_size(lms), 1e-6)).astype(np.float32)


def crop_region(region: str) -> tuple[int, int, float]:
    if region not in CROP_REGIONS:
        raise InputError(f"unknown mouth crop region {region!r}; choose from {', '.join(CROP_REGIONS)}")
    return CROP_REGIONS[region]


def mouth_crop_transforms(lms: np.ndarray, region: str = "lips") -> np.ndarray:
    """[N, 2, 3] affine maps (image -> crop) centred on the lips (or below, see CROP_REGIONS),
    de-rotated by the eye line."""
    crop_h, crop_w, down = crop_region(region)
    eyes = lms[:, EYE_OUTER_LEFT, :2] - lms[:, EYE_OUTER_RIGHT, :2]
    angle = np.arctan2(eyes[:, 1], eyes[:, 0])
    scale = CROP_W / (CROP_WIDTH_OVER_EYES * np.maximum(np.linalg.norm(eyes, axis=-1), 1e-6))
    centre = lms[:, [MOUTH_LEFT, MOUTH_RIGHT, UPPER_OUTER_LIP, LOWER_OUTER_LIP], :2].mean(axis=1)
    # "Down" = the eye line turned by +90 degrees (image y grows downwards).
    centre = centre + down * np.stack([-eyes[:, 1], eyes[:, 0]], axis=-1)
    cos, sin = np.cos(-angle) * scale, np.sin(-angle) * scale
    m = np.zeros((len(lms), 2, 3), np.float64)
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    m[:, 0, 2] = crop_w / 2 - (cos * centre[:, 0] - sin * centre[:, 1])
    m[:, 1, 2] = crop_h / 2 - (sin * centre[:, 0] + cos * centre[:, 1])
    return m


def mouth_crops(frames: Iterable[np.ndarray], lms: np.ndarray, region: str = "lips") -> np.ndarray:
    """[N, H, W] uint8 grayscale mouth crops of RGB ``frames`` (one per landmark row); 48x96 for the
    default "lips" region (see CROP_REGIONS)."""
    import cv2

    crop_h, crop_w, _ = crop_region(region)
    transforms = mouth_crop_transforms(lms, region)
    out = np.zeros((len(lms), crop_h, crop_w), np.uint8)
    n = 0
    for i, frame in enumerate(progress(frames, "mouth crops", total=len(lms), unit="frame")):
        if i >= len(lms):
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        out[i] = cv2.warpAffine(gray, transforms[i], (crop_w, crop_h), flags=cv2.INTER_AREA,
                                borderMode=cv2.BORDER_REPLICATE)
        n += 1
    if n != len(lms):
        raise InputError(f"video has {n} frames but landmarks cover {len(lms)}; re-run prepare")
    return out


def face_mesh_landmarks(video: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Run MediaPipe face mesh (478 points) on every frame of ``video``.

    Returns (lms [N,478,3] float32 pixels, detected [N] bool, fps). Frames without a face get the
    nearest detected frame's landmarks (so geometry stays defined) and detected=False."""
    import av
    import mediapipe as mp

    from synctalk.io.video import upright_rgb

    try:
        container = av.open(str(video))
    except av.error.FFmpegError as e:
        raise InputError(f"cannot read video {video} ({type(e).__name__})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{video} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or 25)
        total = stream.frames or None
        rows: list[np.ndarray | None] = []
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                             min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
            for frame in progress(container.decode(stream), "face mesh", total=total, unit="frame"):
                if max_frames is not None and len(rows) >= max_frames:
                    break
                rgb = upright_rgb(frame)
                h, w = rgb.shape[:2]
                res = mesh.process(rgb)
                if not res.multi_face_landmarks:
                    rows.append(None)
                    continue
                pts = res.multi_face_landmarks[0].landmark
                rows.append(np.array([(p.x * w, p.y * h, p.z * w) for p in pts], np.float32))
    detected = np.array([r is not None for r in rows], bool)
    if not detected.any():
        raise InputError(f"no face found in any frame of {video}")
    found = np.flatnonzero(detected)
    nearest = found[np.clip(np.searchsorted(found, np.arange(len(rows))), 0, len(found) - 1)]
    lms = np.stack([rows[j] for j in nearest]).astype(np.float32)
    if (~detected).any():
        log.warning("no face in %d of %d frames of %s", int((~detected).sum()), len(rows), video)
    return lms, detected, fps
