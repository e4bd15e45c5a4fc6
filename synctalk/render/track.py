"""Which training frame drives each output frame: pose, expressions and background.

With new audio the head needs a pose and the 7 upper-face blendshapes for every output frame. As the
original, they are taken from the training track, walking forward through it and back again
(0, 1, ..., T-1, T-2, ..., 1, 0, 1, ...), so any audio length is covered without a jump. Options:

* ``pose="fixed"``: every output frame uses the first training frame (a still head);
* ``smoothing`` > 0: a Gaussian (sigma in frames) over the walked sequence of rotations, translations
  and expressions (rotations averaged as matrices, then projected back to the nearest rotation);
* ``blink="none"``: the two eye-blink blendshapes are held at the track's 5th percentile (open eyes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synctalk import subject as S
from synctalk.errors import InputError

POSE_MODES = ("walk", "fixed")
BLINK_MODES = ("auto", "none")
BLINK_CHANNELS = tuple(S.EXPRESSION_NAMES.index(n) for n in ("eye_blink_left", "eye_blink_right"))
OPEN_EYES_PERCENTILE = 5.0


def walk_indices(n_out: int, n_track: int) -> np.ndarray:
    """Ping-pong indices into a track of ``n_track`` frames for ``n_out`` output frames."""
    if n_track <= 0:
        raise InputError("the subject has no training frames to take poses from")
    if n_track == 1:
        return np.zeros(n_out, dtype=np.int64)
    period = 2 * (n_track - 1)
    phase = np.arange(n_out, dtype=np.int64) % period
    return np.where(phase < n_track, phase, period - phase)


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(int(np.ceil(3.0 * sigma)), 1)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth_sequence(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge replication; any trailing shape."""
    if sigma <= 0 or values.shape[0] < 2:
        return values.copy()
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    flat = values.reshape(values.shape[0], -1).astype(np.float64)
    padded = np.concatenate([np.repeat(flat[:1], r, 0), flat, np.repeat(flat[-1:], r, 0)])
    out = np.stack([np.convolve(padded[:, c], k, mode="valid") for c in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape).astype(values.dtype)


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> the closest rotation matrices (SVD projection, determinant +1)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u = u.copy()
    u[:, :, 2] *= d[:, None]
    return u @ vt


@dataclass
class DrivingTrack:
    frame_ids: np.ndarray     # [N] long: the training frame each output frame takes pose/background from
    c2w: np.ndarray           # [N, 4, 4] float32 NeRF-scene poses (after smoothing)
    expressions: np.ndarray   # [N, 7] float32


def build_track(c2w_nerf: np.ndarray, expressions: np.ndarray, n_track: int, n_out: int, pose: str = "walk",
                smoothing: float = 0.0, blink: str = "auto") -> DrivingTrack:
    """Poses/expressions for ``n_out`` output frames from the first ``n_track`` (training) frames."""
    if pose not in POSE_MODES:
        raise InputError(f"--pose must be one of {', '.join(POSE_MODES)}, got {pose!r}")
    if blink not in BLINK_MODES:
        raise InputError(f"--blink must be one of {', '.join(BLINK_MODES)}, got {blink!r}")
    if smoothing < 0:
        raise InputError(f"--smoothing must be >= 0 frames, got {smoothing}")
    ids = walk_indices(n_out, n_track) if pose == "walk" else np.zeros(n_out, dtype=np.int64)
    poses = c2w_nerf[ids].astype(np.float64)
    exp = expressions[ids].astype(np.float64)
    if smoothing > 0 and pose == "walk":
        rot = nearest_rotation(smooth_sequence(poses[:, :3, :3], smoothing))
        poses[:, :3, :3] = rot
        poses[:, :3, 3] = smooth_sequence(poses[:, :3, 3], smoothing)
        exp = smooth_sequence(exp, smoothing)
    if blink == "none":
        for c in BLINK_CHANNELS:
            exp[:, c] = np.percentile(expressions[:n_track, c], OPEN_EYES_PERCENTILE)
    return DrivingTrack(ids, poses.astype(np.float32), exp.astype(np.float32))
