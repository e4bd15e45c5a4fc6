"""Mouth landmark distance (LMD), the lip-shape metric of the original's evaluation.

LMD = mean Euclidean distance, in pixels of the full frame, between the 20 mouth points (iBUG-68
indices 48-67) of the prediction and of the ground truth, after removing each set's own mean
(translation), averaged over points and then over frames. Landmarks come from dlib's 68-point shape
predictor (the original uses FAN, which cannot be installed offline; dlib gives the same iBUG layout).

Weights: `shape_predictor_68_face_landmarks.dat` from the `face-recognition-models` package, an
explicit path, or $SYNCTALK_DLIB_68. Its training data (iBUG 300-W) is licensed for non-commercial
research only: the metric is for evaluation, never shipped inside a product.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.errors import InputError, MissingWeightsError
from synctalk.log import get_logger, progress

log = get_logger(__name__)

MOUTH = slice(48, 68)  # iBUG-68 outer lip 48-59, inner lip 60-67
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_ENV = "SYNCTALK_DLIB_68"

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


def default_predictor_path() -> Path | None:
    """$SYNCTALK_DLIB_68, else the file inside the installed `face_recognition_models` package.

    The package is located without importing it: its __init__ imports pkg_resources, which recent
    setuptools no longer provide."""
    env = os.environ.get(PREDICTOR_ENV)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "models" / PREDICTOR_FILE
        if candidate.is_file():
            return candidate
    return None


def mouth_distance(pred_lms: np.ndarray, gt_lms: np.ndarray) -> np.ndarray:
    """Per-frame LMD from landmark arrays [..., 68, 2] (or already the 20 mouth points [..., 20, 2])."""
    pred = np.asarray(pred_lms, dtype=np.float64)
    gt = np.asarray(gt_lms, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 2 or pred.shape[-2] not in (20, 68):
        raise ValueError(f"landmarks must be [...,68,2] or [...,20,2] and equal, got {pred.shape} / {gt.shape}")
    if pred.shape[-2] == 68:
        pred, gt = pred[..., MOUTH, :], gt[..., MOUTH, :]
    pred = pred - pred.mean(axis=-2, keepdims=True)
    gt = gt - gt.mean(axis=-2, keepdims=True)
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1)


class Landmarks68:
    """dlib HOG face detector + 68-point shape predictor on RGB uint8 frames.

    `upsample` > 0 lets the HOG detector find faces smaller than ~80 px (slower)."""

    def __init__(self, predictor_path: str | os.PathLike | None = None, upsample: int = 0):
        try:
            import dlib
        except ImportError:
            raise MissingWeightsError(
                "LMD needs dlib: pip install dlib-bin face-recognition-models (the `eval` extra)") from None
        path = Path(predictor_path) if predictor_path is not None else default_predictor_path()
        if path is None or not path.is_file():
            where = f" (looked at {path})" if path is not None else ""
            raise MissingWeightsError(
                f"dlib 68-point model {PREDICTOR_FILE} not found{where}: pip install face-recognition-models, "
                f"or pass its path / set {PREDICTOR_ENV}")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as e:
            raise MissingWeightsError(f"{path} is not a dlib shape predictor ({e})") from None
        self._detector = dlib.get_frontal_face_detector()
        self._dlib = dlib
        self.upsample = int(upsample)
        self.path = path

    def detect(self, image: np.ndarray) -> Box | None:
        """The largest face box found by the detector, or None."""
        image = _as_rgb_uint8(image)
        rects = self._detector(image, self.upsample)
        if len(rects) == 0:
            return None
        best = max(rects, key=lambda r: r.width() * r.height())
        return (float(best.left()), float(best.top()), float(best.right()), float(best.bottom()))

    def landmarks(self, image: np.ndarray, box: Box | None = None, fallback_box: Box | None = None
                  ) -> np.ndarray | None:
        """[68, 2] float64 (x, y) pixels, or None when no face is found.

        `box` skips detection; `fallback_box` is used only when detection finds nothing (e.g. the
        ground truth's box for a blurry render, or a box from the subject's mediapipe landmarks)."""
        image = _as_rgb_uint8(image)
        if box is None:
            box = self.detect(image)
            if box is None:
                box = fallback_box
        if box is None:
            return None
        left, top, right, bottom = (int(round(v)) for v in box)
        shape = self._predictor(image, self._dlib.rectangle(left, top, right, bottom))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)


@dataclass(frozen=True)
class LmdResult:
    lmd: float              # mean over frames where both sets of landmarks exist (nan when none)
    per_frame: np.ndarray   # [N] float64, nan where a face was not found
    missing: int            # frames without landmarks in the prediction or the ground truth
    pred_faces: int = 0     # predictions in which the detector finds a face on its own (see evaluate_lmd)


def evaluate_lmd(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray], landmarker: Landmarks68,
                 total: int | None = None, shared_box: bool = True) -> LmdResult:
    """LMD over paired RGB uint8 frames.

    shared_box=True (default) fits both landmark sets inside the ground truth's face box. dlib's
    points depend on where the box sits on the face: frames shifted 5 px under an unmoved box
    measured 0.75 px LMD, about the size of the effect measured (consecutive real frames: 1.09 px).
    The HOG box snaps to a coarse grid, so independent boxes add such offsets whenever they differ;
    a shared box removes them for aligned (self-driven) renders. shared_box=False detects in each
    frame independently, as the original did with FAN (the ground truth's box stays the fallback).

    Because a shared box is fitted even to a render with no face in it (the shape model then returns a
    mean mouth a few px from the truth), ``pred_faces`` counts the predictions where the detector finds
    a face by itself: report it beside the LMD, which only means something when that count is high."""
    values: list[float] = []
    missing = 0
    pred_faces = 0
    for pred, gt in progress(zip(preds, gts), desc="LMD", total=total, unit="frame"):
        if pred.shape != gt.shape:
            raise InputError(f"prediction frame {pred.shape} and ground truth {gt.shape} differ in size")
        gt_box = landmarker.detect(gt)
        gt_lms = landmarker.landmarks(gt, box=gt_box) if gt_box is not None else None
        pred_faces += landmarker.detect(pred) is not None
        if shared_box:
            pred_lms = landmarker.landmarks(pred, box=gt_box) if gt_box is not None else None
        else:
            pred_lms = landmarker.landmarks(pred, fallback_box=gt_box)
        if gt_lms is None or pred_lms is None:
            missing += 1
            values.append(float("nan"))
            continue
        values.append(float(mouth_distance(pred_lms, gt_lms)))
    per_frame = np.asarray(values, dtype=np.float64)
    found = per_frame[~np.isnan(per_frame)]
    if missing:
        log.warning("LMD: no face in %d of %d frame pairs; they are left out of the mean", missing, len(values))
    return LmdResult(lmd=float(found.mean()) if found.size else float("nan"), per_frame=per_frame, missing=missing,
                     pred_faces=pred_faces)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame [H,W,3], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)
