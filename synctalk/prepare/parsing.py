"""Stage `parsing`: per-frame label map (face/hair/neck/torso/background) + soft portrait face mask.

No face-parsing network ships offline, so the labels are built from geometry the earlier stage
already measured: the mesh's face oval and jaw line, and the selfie person mask. Everything is
expressed in a face-aligned frame (origin at the chin, ``up`` from chin to forehead, ``right``
perpendicular) so a rolled head gets rolled regions:

* FACE  = the filled face oval (skin, eyes, brows, nose, lips; no hair, no ears), as BiSeNet's
          classes 1-6 and 10-13 in the original.
* HAIR  = person pixels above the jaw line that are not FACE. Beside the face the boundary runs
          sideways from the jaw angles, so ears and hair at the temples belong to the head that the
          NeRF renders (otherwise they would be pasted from the torso plate and shimmer).
* NECK  = person pixels below the jaw inside a band under the chin (``neck_width_factor`` x the jaw
          width, down to ``neck_length_factor`` x the chin-forehead distance below the chin) whose
          chroma matches the face's skin (``neck_skin_tolerance``), so collars and ties are TORSO.
* TORSO = all remaining person pixels (below the neck top).
* BACKGROUND = not person. A face oval pixel the selfie model missed still counts as person: the
          mesh is the sharper of the two at the face.

The frames are read only for the neck's skin test; the rest is polygon fills (a few ms per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from synctalk import subject as S
from synctalk.errors import StageError
from synctalk.io.video import iter_frames
from synctalk.log import get_logger, progress
from synctalk.prepare import mesh_topology as M
from synctalk.prepare.context import StageContext
from synctalk.prepare.maskcodec import MaskReader, MaskWriter

log = get_logger("prepare.parsing")

@dataclass(frozen=True)
class ParsingConfig:
    chin_extension_px: int = 5        # portrait mask: extend the lower face contour down (as the original)
    portrait_feather_px: int = 9      # portrait mask: Gaussian kernel size (odd, px; 9 = the original 9x9); 0 = hard
    neck_width_factor: float = 1.0    # neck band width / distance between the two jaw angles
    neck_skin_tolerance: float = 3.0  # neck = band pixels within this many robust sigmas of face chroma; 0 = whole band
    neck_length_factor: float = 0.4   # neck band length below the chin / chin-to-forehead distance


def _fill(image: np.ndarray, points_xy: np.ndarray, value: int) -> None:
    # 4 fractional bits: sub-pixel polygon vertices, so slow motion does not flicker by whole pixels.
    pts = np.round(np.asarray(points_xy, dtype=np.float64) * 16).astype(np.int32)
    cv2.fillPoly(image, [pts.reshape(-1, 1, 2)], int(value), lineType=cv2.LINE_8, shift=4)


def _polygon_mask(points_xy: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    _fill(mask, points_xy, 255)
    return mask


def face_mask(lms_xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Filled face oval, 0/255 uint8 [H,W]."""
    return _polygon_mask(np.asarray(lms_xy)[list(M.FACE_OVAL), :2], height, width)


def _face_axes(lms_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(up, right, chin-forehead length) of the face in image coordinates (y down)."""
    up = lms_xy[M.FOREHEAD_TOP] - lms_xy[M.CHIN]
    length = float(np.hypot(up[0], up[1]))
    if length < 1e-6:
        raise ValueError("degenerate landmarks: forehead and chin coincide")
    up = up / length
    right = np.array([-up[1], up[0]])  # for an upright face (up = (0,-1)) this is (1, 0): image right
    return up, right, length


def head_outline(lms_xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Polygon [K,2] of everything above the jaw line (extended sideways from the jaw angles)."""
    lms_xy = np.asarray(lms_xy, dtype=np.float64)[:, :2]
    up, right, _ = _face_axes(lms_xy)
    far = 4.0 * max(height, width)   # beyond the frame in every direction; fillPoly clips
    jaw = lms_xy[list(M.JAW_LINE)]
    left_end, right_end = jaw[0], jaw[-1]  # image-left (subject's right) and image-right jaw angles
    outline = np.concatenate([
        jaw,
        [right_end + far * right, right_end + far * right + far * up,
         left_end - far * right + far * up, left_end - far * right],
    ])
    return outline


def neck_outline(lms_xy: np.ndarray, width_factor: float = 1.0, length_factor: float = 0.4) -> np.ndarray:
    """Polygon [4,2] of a face-aligned band under the chin, from the jaw angles' level downwards."""
    lms_xy = np.asarray(lms_xy, dtype=np.float64)[:, :2]
    up, right, face_len = _face_axes(lms_xy)
    chin = lms_xy[M.CHIN]
    half = 0.5 * width_factor * float(np.linalg.norm(lms_xy[M.JAW_ANGLE_LEFT] - lms_xy[M.JAW_ANGLE_RIGHT]))
    top = max(float((lms_xy[j] - chin) @ up) for j in (M.JAW_ANGLE_LEFT, M.JAW_ANGLE_RIGHT))
    bottom = -length_factor * face_len
    corners = [chin + s * right + t * up for s, t in ((-half, top), (half, top), (half, bottom), (-half, bottom))]
    return np.array(corners)


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def skin_like(rgb: np.ndarray, face: np.ndarray, candidates: np.ndarray, tolerance: float = 3.0) -> np.ndarray:
    """Which ``candidates`` pixels have the chroma of the face's skin (bool [H,W]).

    Skin statistics are the median and MAD of YCrCb chroma over the face oval (eyes, brows and lips
    are a small minority there). Chroma only: the neck is usually shaded darker than the face but
    keeps its hue, while collars, ties and clothes differ in hue.
    """
    out = np.zeros(candidates.shape, dtype=bool)
    face_box, cand_box = _bbox(face), _bbox(candidates)
    if face_box is None or cand_box is None:
        return out
    face_cc = cv2.cvtColor(np.ascontiguousarray(rgb[face_box]), cv2.COLOR_RGB2YCrCb)[..., 1:][face[face_box]]
    face_cc = face_cc[::4].astype(np.float32)
    centre = np.median(face_cc, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(face_cc - centre), axis=0), 2.0)
    cand_cc = cv2.cvtColor(np.ascontiguousarray(rgb[cand_box]), cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
    skin = (np.abs(cand_cc - centre) <= tolerance * spread).all(axis=-1).astype(np.uint8)
    # drop speckles and thin bridges (shirt seams), close pores/stubble holes
    skin = cv2.morphologyEx(skin, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    skin = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    out[cand_box] = skin.astype(bool) & candidates[cand_box]
    return out


def labels_for_frame(lms_xy: np.ndarray, person_mask: np.ndarray, neck_width_factor: float = 1.0,
                     neck_length_factor: float = 0.4, rgb: np.ndarray | None = None,
                     neck_skin_tolerance: float = 3.0) -> np.ndarray:
    """uint8 [H,W] label map (``subject.LABEL_*``) from mesh landmarks [478,2+] (pixels) and a person mask.

    With the frame ``rgb`` (and ``neck_skin_tolerance`` > 0) only skin-coloured pixels of the neck band
    stay NECK; shirt collars and ties in the band become TORSO.
    """
    height, width = person_mask.shape[:2]
    lms_xy = np.asarray(lms_xy, dtype=np.float64)[:, :2]
    # Paint regions in increasing priority, then keep only person pixels (and the whole face oval).
    labels = np.full((height, width), S.LABEL_TORSO, dtype=np.uint8)
    _fill(labels, neck_outline(lms_xy, neck_width_factor, neck_length_factor), S.LABEL_NECK)
    _fill(labels, head_outline(lms_xy, height, width), S.LABEL_HAIR)
    _fill(labels, lms_xy[list(M.FACE_OVAL)], S.LABEL_FACE)
    labels[(person_mask == 0) & (labels != S.LABEL_FACE)] = S.LABEL_BACKGROUND
    if rgb is not None and neck_skin_tolerance > 0:
        neck = labels == S.LABEL_NECK
        face = labels == S.LABEL_FACE
        skin = _touching(skin_like(rgb, face, neck, neck_skin_tolerance), face)
        labels[neck & ~skin] = S.LABEL_TORSO
    return labels


def _touching(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that touch ``anchor`` (within 2 px): the neck hangs off the jaw,
    skin-coloured bits of a tie or a hand further down do not."""
    box = _bbox(mask)
    if box is None:
        return mask
    _, parts = cv2.connectedComponents(mask[box].astype(np.uint8), connectivity=8)
    near = cv2.dilate(anchor[box].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    keep = np.unique(parts[near & mask[box]])
    out = np.zeros_like(mask)
    out[box] = np.isin(parts, keep[keep > 0])
    return out


def portrait_region(lms_xy: np.ndarray, height: int, width: int, chin_extension_px: int = 5) -> np.ndarray:
    """Hard face-only paste-back region, uint8 [H,W] 0/255: what `portrait_mask.npz` stores.

    As the original: the face oval, its lower contour pushed ``chin_extension_px`` down over the middle
    half of the face width, so the blend seam sits below the chin, not on it.
    """
    mask = face_mask(lms_xy, height, width)
    ext = int(chin_extension_px)
    if ext > 0:
        xs = np.asarray(lms_xy, dtype=np.float64)[list(M.FACE_OVAL), 0]
        quarter = (xs.max() - xs.min()) / 4.0
        x0 = int(np.clip(np.ceil(xs.min() + quarter), 0, width))
        x1 = int(np.clip(np.floor(xs.max() - quarter) + 1, 0, width))
        if x1 > x0 and ext < height:
            shifted = np.zeros_like(mask[:, x0:x1])
            shifted[ext:] = mask[:-ext, x0:x1]
            mask[:, x0:x1] |= shifted
    return mask


def feather_mask(mask: np.ndarray, feather_px: int = 9) -> np.ndarray:
    """Gaussian feather with a ``feather_px`` square kernel (sigma from OpenCV: 1.7 px for 9), 0..255.

    The subject stores the hard region (a third of the bytes of a soft mask, whose moving edge
    compresses badly); readers feather it with the stage's ``portrait_feather_px`` setting."""
    mask = mask.copy()
    k = int(feather_px)
    if k > 0:
        k += 1 - k % 2  # OpenCV needs an odd kernel
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if len(ys):
            height, width = mask.shape
            # Blur only the face's box plus a kernel of zeros around it: same result, ~5x cheaper.
            y0, y1 = max(ys[0] - k, 0), min(ys[-1] + k + 1, height)
            x0, x1 = max(xs[0] - k, 0), min(xs[-1] + k + 1, width)
            mask[y0:y1, x0:x1] = cv2.GaussianBlur(mask[y0:y1, x0:x1], (k, k), 0)
    return mask


def portrait_mask(lms_xy: np.ndarray, height: int, width: int, chin_extension_px: int = 5,
                  feather_px: int = 9) -> np.ndarray:
    """Soft face-only paste-back mask, uint8 [H,W] 0..255 (region + feather)."""
    return feather_mask(portrait_region(lms_xy, height, width, chin_extension_px), feather_px)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ParsingConfig = ctx.config.parsing
    n = int(ctx.fact("n_frames"))
    width, height = int(ctx.fact("width")), int(ctx.fact("height"))
    lms = S.load_landmarks(ctx.path(S.LANDMARKS))[0]
    if lms.shape[0] != n:
        raise StageError(f"{S.LANDMARKS} has {lms.shape[0]} frames, expected {n}; re-run with --force")
    label_counts = np.zeros(len(S.LABEL_NAMES), dtype=np.int64)
    face_px = face_missed_px = 0
    # zlib level 8 shrinks the label file by a quarter (1.71 -> 1.30 KB per frame on the anchor) for
    # ~0.4 ms per frame; on the soft portrait mask higher levels gain ~1%, so it keeps the default.
    labels_out = MaskWriter(ctx.path(S.PARSING), height, width, level=8)
    portrait_out = MaskWriter(ctx.path(S.PORTRAIT), height, width)
    frames = iter_frames(ctx.path(S.FRAMES)) if cfg.neck_skin_tolerance > 0 else None
    with MaskReader(ctx.path(S.SEGMENTATION)) as persons:
        if persons.shape != (n, height, width):
            raise StageError(f"{S.SEGMENTATION} is {persons.shape}, expected {(n, height, width)}; re-run with --force")
        for t in progress(range(n), "parsing", unit="frame"):
            person = persons[t]
            rgb = next(frames, None) if frames is not None else None
            if frames is not None and rgb is None:
                raise StageError(f"{S.FRAMES} ended at frame {t}, expected {n} frames; re-run with --force")
            labels = labels_for_frame(lms[t], person, cfg.neck_width_factor, cfg.neck_length_factor,
                                      rgb, cfg.neck_skin_tolerance)
            labels_out.add(labels)
            portrait_out.add(portrait_region(lms[t], height, width, cfg.chin_extension_px))
            # statistics on every 2nd row and column: 4x cheaper, fractions still exact to ~1e-3
            sub_labels, sub_person = labels[::2, ::2], person[::2, ::2]
            label_counts += np.bincount(sub_labels.ravel(), minlength=len(label_counts))[: len(label_counts)]
            face = sub_labels == S.LABEL_FACE
            face_px += int(face.sum())
            face_missed_px += int((face & (sub_person == 0)).sum())
    labels_out.close()
    portrait_out.close()
    face_outside_person = face_missed_px / max(face_px, 1)
    if face_outside_person > 0.05:
        log.warning("%.1f%% of the face oval lies outside the selfie person mask; check the segmentation",
                    100 * face_outside_person)
    fractions = label_counts / float(label_counts.sum())
    return {"parsing": {
        "label_fractions": {S.LABEL_NAMES[i]: round(float(f), 4) for i, f in enumerate(fractions)},
        "face_outside_person": round(face_outside_person, 4),
        "bytes": {S.PARSING: ctx.path(S.PARSING).stat().st_size, S.PORTRAIT: ctx.path(S.PORTRAIT).stat().st_size},
    }}
