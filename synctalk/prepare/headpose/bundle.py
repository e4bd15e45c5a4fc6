"""Two-stage bundle adjustment of keypoint tracks (PyTorch, L-BFGS; CPU is enough).

Stage 1 optimises only the 3D points, the per-frame poses fixed at the rigid fit (``rigid.py``);
points start at their back-projection onto the posed rest shape, not at zero, so L-BFGS starts in the
right basin. Stage 2 optimises points, rotations (axis-angle of world->camera) and translations
together under
  * a Huber loss on the pixel reprojection error (a few bad tracks cannot pull the poses),
  * a light temporal prior: the second difference of each frame's rotation vector and translation,
    scaled to pixels (x focal, x focal / depth) so its weight is comparable to one keypoint,
  * a gauge prior that keeps the mean rotation vector and mean translation of all frames at those of
    the rigid fit, which pins the 7 free similarity degrees of freedom (rotation, translation, scale)
    to the rest shape's world frame without trusting any single frame.
The focal length stays fixed at the value of the focal search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synctalk.log import get_logger
from synctalk.prepare.headpose.convention import matrix_to_rotvec

log = get_logger("prepare.pose")


@dataclass
class BundleResult:
    rot: np.ndarray            # [N,3,3] world->camera after stage 2
    trans: np.ndarray          # [N,3]
    points: np.ndarray         # [K,3] world points after stage 2
    points_stage1: np.ndarray  # [K,3] world points after stage 1 (raw poses)
    error_before: np.ndarray   # [N,K] reprojection error (px) of stage-1 points under the raw poses
    error_after: np.ndarray    # [N,K] reprojection error (px) after stage 2


def rodrigues(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle [...,3] -> rotation matrix [...,3,3], differentiable at zero."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    small = theta2 < 1e-12
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                     torch.stack([-y, x, zero], -1)], -2)
    eye = torch.eye(3, dtype=rotvec.dtype).expand(k.shape)
    return eye + a * k + b * (k @ k)


def project_torch(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, focal: float,
                  cx: float, cy: float) -> torch.Tensor:
    """Pixels [N,K,2] of world points [K,3] under world->camera poses (OpenGL camera, see convention)."""
    # matmul, not einsum: einsum's batched path was ~15x slower here (profiled on 1779 x 151 points)
    cam = torch.matmul(points, rot.transpose(1, 2)) + trans[:, None]
    inv_depth = 1.0 / (-cam[..., 2]).clamp_min(1e-6)
    return torch.stack([cx + focal * cam[..., 0] * inv_depth, cy - focal * cam[..., 1] * inv_depth], -1)


def _robust_reprojection(uv: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, delta: float
                         ) -> torch.Tensor:
    """Sum of Huber(pixel error norm) over visible observations, accumulated in float64."""
    sq = ((uv - target) ** 2).sum(-1)
    err = torch.sqrt(sq + 1e-12)
    per = torch.where(err <= delta, 0.5 * sq, delta * (err - 0.5 * delta))
    return (per * weight).sum(dtype=torch.float64)


def _lbfgs(params: list[torch.Tensor], closure, iterations: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def step() -> torch.Tensor:
        opt.zero_grad()
        loss = closure()
        loss.backward()
        return loss

    opt.step(step)


def bundle_adjust(track_xy: np.ndarray, track_vis: np.ndarray, rot_raw: np.ndarray, trans_raw: np.ndarray,
                  points_init: np.ndarray, focal: float, cx: float, cy: float, iters_points: int = 200,
                  iters_joint: int = 600, huber_px: float = 1.0, smooth_weight: float = 1.0,
                  gauge_weight: float = 100.0) -> BundleResult:
    """Refine points, then points + poses, against tracks [N,K,2] visible where ``track_vis`` [N,K]."""
    # One thread: the tensors are small, and OpenMP workers spinning on a shared, busy CPU made the
    # same solve 25x slower (416 s vs 16 s wall measured on the 2-core dev machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bundle_adjust(track_xy, track_vis, rot_raw, trans_raw, points_init, focal, cx, cy, iters_points,
                              iters_joint, huber_px, smooth_weight, gauge_weight)
    finally:
        torch.set_num_threads(threads)


def _bundle_adjust(track_xy: np.ndarray, track_vis: np.ndarray, rot_raw: np.ndarray, trans_raw: np.ndarray,
                   points_init: np.ndarray, focal: float, cx: float, cy: float, iters_points: int,
                   iters_joint: int, huber_px: float, smooth_weight: float, gauge_weight: float) -> BundleResult:
    # float64: in float32 L-BFGS's change tolerance never triggers and it runs every iteration (3x slower)
    dt = torch.float64
    xy = torch.as_tensor(np.nan_to_num(track_xy.astype(np.float64)), dtype=dt)
    vis = torch.as_tensor(track_vis, dtype=torch.bool)
    weight = vis.to(dt)
    rv_raw = torch.as_tensor(matrix_to_rotvec(rot_raw), dtype=dt)
    t_raw = torch.as_tensor(trans_raw, dtype=dt)
    r_fixed = rodrigues(rv_raw)
    points = torch.tensor(points_init, dtype=dt, requires_grad=True)

    def data_term(pts: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        return _robust_reprojection(project_torch(pts, rot, trans, focal, cx, cy), xy, weight, huber_px)

    def reprojection(pts: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(project_torch(pts, rot, trans, focal, cx, cy) - xy, dim=-1)

    _lbfgs([points], lambda: data_term(points, r_fixed, t_raw), iters_points)
    with torch.no_grad():
        points_stage1 = points.detach().clone()
        error_before = reprojection(points_stage1, r_fixed, t_raw)

    rotvec = rv_raw.clone().requires_grad_(True)
    trans = t_raw.clone().requires_grad_(True)
    depth = float(-t_raw[:, 2].mean())
    # pixels per radian of rotation and per world unit of translation, at the head's depth
    rot_scale, trans_scale = focal, focal / max(depth, 1e-6)
    n_obs = max(float(weight.sum()), 1.0)
    n_frames = len(rv_raw)

    def joint_loss() -> torch.Tensor:
        loss = data_term(points, rodrigues(rotvec), trans)
        if n_frames >= 3:
            d2r = rotvec[2:] - 2 * rotvec[1:-1] + rotvec[:-2]
            d2t = trans[2:] - 2 * trans[1:-1] + trans[:-2]
            loss = loss + 0.5 * smooth_weight * ((rot_scale * d2r) ** 2 + (trans_scale * d2t) ** 2).sum(dtype=torch.float64)
        gauge_r = rot_scale * (rotvec - rv_raw).mean(0)
        gauge_t = trans_scale * (trans - t_raw).mean(0)
        gauge = (gauge_r**2).sum(dtype=torch.float64) + (gauge_t**2).sum(dtype=torch.float64)
        return loss + 0.5 * gauge_weight * n_obs * gauge / n_frames

    _lbfgs([points, rotvec, trans], joint_loss, iters_joint)
    with torch.no_grad():
        rot_final = rodrigues(rotvec)
        error_after = reprojection(points, rot_final, trans)
    return BundleResult(rot=rot_final.numpy(), trans=trans.detach().numpy().copy(),
                        points=points.detach().numpy().copy(), points_stage1=points_stage1.numpy(),
                        error_before=error_before.numpy(), error_after=error_after.numpy())
