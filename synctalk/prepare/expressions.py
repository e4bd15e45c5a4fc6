"""Stage `expressions`: 7 upper-face blendshape-like channels per frame, from mesh geometry.

MediaPipe's blendshape model does not ship offline, so the channels are measured on the mesh:

1. Remove the rigid head motion: fit a similarity transform (rotation, scale, translation) of each
   frame's rigid upper-face points (``mesh_topology.RIGID``) to the subject's median shape
   (generalised Procrustes, two rounds) and apply it to all 478 points. Head turns and zoom then no
   longer change the measures; only the face's own deformation does.
2. Raw measures in the median shape's frame, lengths in inter-ocular distances (IOD, outer corners);
   brow heights are measured above the median shape's eye corners:
     brow_down_*       height of the whole brow above the eye corners (lower = more "down")
     brow_inner_up     mean height of both inner brow ends above the inner eye corners
     brow_outer_up_*   height of the outer brow end above the outer eye corner
     eye_blink_*       eye aspect ratio (EAR) of that eye (open ~0.32, shut ~0.08)
3. Savitzky-Golay smoothing of the raw series (window ``smooth_window``, order 3; 0 disables).
4. Per-subject normalisation to [0, 1]:  exp = clip(sign * (raw - neutral) / span, 0, 1)
     neutral = median of the series (the subject's resting value -> 0)
     sign    = +1 for "up" channels, -1 for brow_down and eye_blink (they grow as the raw value drops)
     span    = distance from neutral to the ``brow_percentile`` (99th) percentile in the channel's
               direction (the 1st percentile for brow_down), floored at
               ``min_brow_span`` IOD for brows so a subject who never moves a brow is not amplified
               noise; for blinks span = neutral - min(p1, ``closed_ear_ratio`` * neutral), so a clip
               without a full blink still maps a half-closed eye to about half.
   neutral, span and sign are published as facts and stored in the file, so the mapping can be
   applied to other footage of the subject.

Side convention: ``_left`` is the subject's own left (mediapipe's LEFT_EYE, the image's right side in
an unmirrored video).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from synctalk import subject as S
from synctalk.errors import StageError
from synctalk.io.atomic import save_npz
from synctalk.log import get_logger
from synctalk.prepare import mesh_topology as M
from synctalk.prepare.context import StageContext

log = get_logger("prepare.expressions")


@dataclass(frozen=True)
class ExpressionConfig:
    smooth_window: int = 5   # Savitzky-Golay window (frames), as the original; 0 disables
    min_brow_span: float = 0.04      # smallest brow span (IOD) that maps to 1.0; guards still brows
    closed_ear_ratio: float = 0.3    # EAR / neutral EAR that counts as shut when the clip has no blink
    brow_percentile: float = 99.0    # raw brow value that maps to 1.0
    blink_percentile: float = 1.0    # raw EAR value that maps to 1.0 (if below closed_ear_ratio)


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Umeyama fit: s, R, t with dst ~= s * src @ R.T + t. src [N,K,3], dst [K,3]."""
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=0)
    a = src - mu_s
    b = dst - mu_d
    cov = np.einsum("nki,kj->nji", a, b) / src.shape[1]     # [N,3,3] = b^T a / K
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))                      # no reflections
    fix = np.ones((src.shape[0], 3))
    fix[:, 2] = d
    rot = u @ (fix[:, :, None] * vt)
    var = (a ** 2).sum(axis=(1, 2)) / src.shape[1]
    scale = (sig * fix).sum(axis=1) / np.maximum(var, 1e-12)
    trans = mu_d - scale[:, None] * np.einsum("nij,nj->ni", rot, mu_s[:, 0])
    return scale, rot, trans


def frontalise(lms: np.ndarray, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Remove each frame's rigid head pose: returns (aligned [N,478,3], median shape [478,3])."""
    lms = np.asarray(lms, dtype=np.float64)
    rigid = list(M.RIGID)
    reference = np.median(lms, axis=0)
    aligned = lms
    for _ in range(rounds):
        scale, rot, trans = _similarity_fit(lms[:, rigid], reference[rigid])
        aligned = scale[:, None, None] * np.einsum("nij,nkj->nki", rot, lms) + trans[:, None, :]
        reference = np.median(aligned, axis=0)
    return aligned, reference


def _ear(pts: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    p = pts[:, list(idx), :2]
    vertical = np.linalg.norm(p[:, 1] - p[:, 5], axis=-1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1)
    return vertical / (2.0 * np.maximum(np.linalg.norm(p[:, 0] - p[:, 3], axis=-1), 1e-9))


def raw_measures(lms: np.ndarray) -> np.ndarray:
    """[N,7] raw geometric measures in ``subject.EXPRESSION_NAMES`` order (see the module doc)."""
    aligned, ref = frontalise(lms)
    iod = float(np.linalg.norm(ref[M.EYE_CORNERS_LEFT[1], :2] - ref[M.EYE_CORNERS_RIGHT[1], :2]))
    up = ref[M.FOREHEAD_TOP, :2] - ref[M.CHIN, :2]
    up = up / np.linalg.norm(up)

    def height(points: tuple[int, ...], anchors: tuple[int, ...]) -> np.ndarray:
        # Anchored at the *median* shape's eye corners, not each frame's: the corners dip slightly when
        # the lids close, which leaked blinks into the outer-brow channels (correlation with EAR -0.40
        # -> -0.07 on the anchor clip, and less jitter).
        above = aligned[:, list(points), :2].mean(axis=1) - ref[list(anchors), :2].mean(axis=0)
        return above @ up / iod

    corners_l, corners_r = M.EYE_CORNERS_LEFT, M.EYE_CORNERS_RIGHT
    inner = 0.5 * (height(M.BROW_INNER_LEFT, corners_l[:1]) + height(M.BROW_INNER_RIGHT, corners_r[:1]))
    return np.stack([
        height(M.BROW_LEFT, corners_l),                 # brow_down_left (raw: brow height)
        height(M.BROW_RIGHT, corners_r),                # brow_down_right
        inner,                                          # brow_inner_up
        height(M.BROW_OUTER_LEFT, corners_l[1:]),       # brow_outer_up_left
        height(M.BROW_OUTER_RIGHT, corners_r[1:]),      # brow_outer_up_right
        _ear(aligned, M.EAR_LEFT),                      # eye_blink_left (raw: EAR)
        _ear(aligned, M.EAR_RIGHT),                     # eye_blink_right
    ], axis=1)


# +1: the channel grows with the raw value; -1: it grows as the raw value drops.
SIGNS = np.array([-1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
_BLINK = slice(5, 7)


def smooth(raw: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay (order 3) along time; windows are made odd, skipped when too short for the clip."""
    if window <= 0:
        return raw.copy()
    from scipy.signal import savgol_filter

    window += 1 - window % 2
    if window <= 3 or raw.shape[0] < window:
        return raw.copy()
    return savgol_filter(raw, window, 3, axis=0, mode="interp")


def normalisation(raw: np.ndarray, cfg: ExpressionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(neutral [7], span [7]) for ``exp = clip(SIGNS * (raw - neutral) / span, 0, 1)``."""
    neutral = np.median(raw, axis=0)
    up = np.percentile(raw, cfg.brow_percentile, axis=0) - neutral
    down = neutral - np.percentile(raw, 100.0 - cfg.brow_percentile, axis=0)
    span = np.where(SIGNS > 0, up, down)
    span = np.maximum(span, cfg.min_brow_span)
    closed = np.minimum(np.percentile(raw[:, _BLINK], cfg.blink_percentile, axis=0),
                        cfg.closed_ear_ratio * neutral[_BLINK])
    span[_BLINK] = np.maximum(neutral[_BLINK] - closed, 1e-6)
    return neutral, span


def normalise(raw: np.ndarray, neutral: np.ndarray, span: np.ndarray) -> np.ndarray:
    return np.clip(SIGNS * (raw - neutral) / span, 0.0, 1.0)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ExpressionConfig = ctx.config.expressions
    n = int(ctx.fact("n_frames"))
    lms = S.load_landmarks(ctx.path(S.LANDMARKS))[0]
    if lms.shape != (n, M.N_POINTS, 3):
        raise StageError(f"{S.LANDMARKS} holds {lms.shape}, expected ({n}, {M.N_POINTS}, 3); re-run with --force")
    raw = raw_measures(lms)
    smoothed = smooth(raw, cfg.smooth_window)
    neutral, span = normalisation(smoothed, cfg)
    exp = normalise(smoothed, neutral, span).astype(np.float32)
    # blink events: rising crossings of 0.5 (a quick plausibility number for the user and the report)
    closed = exp[:, 5:7] > 0.5
    blinks = [int(v) for v in (closed & np.diff(closed, axis=0, prepend=False)).sum(axis=0)]
    log.info("expressions: neutral EAR %.3f/%.3f, blinks %d/%d (left/right eye)",
             neutral[5], neutral[6], *blinks)
    save_npz(ctx.path(S.EXPRESSIONS), exp=exp, names=np.array(S.EXPRESSION_NAMES), raw=raw.astype(np.float32),
             neutral=neutral.astype(np.float32), span=span.astype(np.float32), sign=SIGNS.astype(np.float32))
    return {"expressions": {
        "formula": "exp = clip(sign * (raw - neutral) / span, 0, 1) on Savitzky-Golay-smoothed raw",
        "neutral": [round(float(v), 5) for v in neutral],
        "span": [round(float(v), 5) for v in span],
        "sign": [int(v) for v in SIGNS],
        "blinks": blinks,
    }}
