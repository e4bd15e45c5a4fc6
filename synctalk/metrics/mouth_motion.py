"""Mouth motion against the ground truth: does the rendered mouth move when, and as much as, the real one?

PSNR, SSIM and LMD are averages over frames; a mouth held still at its average shape scores well on all
three (LMD removes each frame's mean position, and a still, half-open mouth is close to most frames).
This metric compares the *time series* of the mouth instead, over the same test frames:

- ``r``: Pearson correlation of the outer-lip height (face-mesh landmarks 0-17 over face size,
  ``synctalk.audio.mouth.lip_height``) of the render against the ground truth's. 1 = the mouth opens
  and closes when the real one does; ~0 = no relation; the real footage against itself is 1.
- ``std_ratio``: the render's standard deviation of that height over the ground truth's. 1 = as lively
  as the real mouth; near 0 = a still mouth.
- ``best_lag`` / ``best_lag_r``: the lag in frames (render later = positive) within ``max_lag`` with the
  highest correlation, so a late or early mouth is told apart from one that does not follow at all.

Landmarks are MediaPipe face mesh (478 points), as ``av_sync``; the ground truth's are the subject's own
(prepare's landmarks stage, raw per-frame mesh on the source frames).
"""

from __future__ import annotations

import numpy as np

from synctalk.audio.mouth import lip_height
from synctalk.errors import InputError

MIN_FRAMES = 25     # 1 s: fewer frames say nothing about motion
MAX_LAG = 5


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else None


def lagged_r(pred: np.ndarray, gt: np.ndarray, lag: int) -> float | None:
    """Correlation of ``pred[t + lag]`` with ``gt[t]`` over the frames both cover."""
    if lag >= 0:
        return _pearson(pred[lag:], gt[: len(gt) - lag])
    return _pearson(pred[: len(pred) + lag], gt[-lag:])


def mouth_motion(pred_lms: np.ndarray, gt_lms: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """Compare face-mesh landmarks [N, >=18, 2+] of a render and of the ground truth over the same N frames."""
    if len(pred_lms) != len(gt_lms):
        raise InputError(f"mouth motion needs the same frames: {len(pred_lms)} rendered, {len(gt_lms)} real")
    if len(pred_lms) < MIN_FRAMES:
        raise InputError(f"mouth motion needs at least {MIN_FRAMES} frames, got {len(pred_lms)}")
    pred = lip_height(np.asarray(pred_lms)).astype(np.float64)
    gt = lip_height(np.asarray(gt_lms)).astype(np.float64)
    gt_std = float(gt.std())
    if gt_std < 1e-9:
        raise InputError("the ground-truth mouth does not move over these frames: nothing to compare with")
    lags = {lag: lagged_r(pred, gt, lag) for lag in range(-max_lag, max_lag + 1)}
    scored = {k: v for k, v in lags.items() if v is not None}
    best = max(scored, key=scored.get) if scored else None
    return {"r": lags[0], "std_ratio": float(pred.std()) / gt_std, "frames": len(pred),
            "best_lag": best, "best_lag_r": scored.get(best) if best is not None else None}
