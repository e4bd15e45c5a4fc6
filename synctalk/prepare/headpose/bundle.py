"""Two-stage bundle adjustment of keypoint tracks: Levenberg-Marquardt with a Schur complement (numpy).

Stage 1 optimises only the 3D points, the per-frame poses fixed at the rigid fit (``rigid.py``). Given
the poses the points are independent, so this is K small 3x3 Gauss-Newton problems solved together;
points start at their back-projection onto the posed rest shape, not at zero.
Stage 2 optimises points, rotations (axis-angle of world->camera) and translations together under
  * a Huber loss on the pixel reprojection error (a few bad tracks cannot pull the poses),
  * a light temporal prior: the second difference of each frame's rotation vector and translation,
    scaled to pixels (x focal, x focal / depth) so its weight is comparable to one keypoint,
  * a gauge prior that keeps the mean rotation vector and mean translation of all frames at those of
    the rigid fit, which pins the 7 free similarity degrees of freedom (rotation, translation, scale)
    to the rest shape's world frame without trusting any single frame.
The focal length stays fixed at the value of the focal search.

Why LM with a Schur complement rather than a first-order optimiser: the problem has ~6N + 3K unknowns
(~11k for a 71-s clip) but a very regular structure. Each frame's 6 pose unknowns interact only with
the neighbouring frames (the temporal prior: a band of 2 frames), with all K points, and with the
rank-6 gauge prior. Eliminating the poses leaves a dense 3K x 3K system (K ~ 100-160), so one exact
Gauss-Newton step costs one banded Cholesky of the pose block, a solve with 3K right-hand sides and
one small dense Cholesky. It converges in ~10-20 steps, where L-BFGS needed ~800 gradient evaluations.
The Huber loss is handled by iteratively re-weighted least squares (weights min(1, delta / |e|)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve_banded, cholesky_banded
from scipy.linalg.lapack import dtbtrs

from synctalk.log import get_logger
from synctalk.prepare.headpose.convention import matrix_to_rotvec, rotvec_to_matrix

log = get_logger("prepare.pose")

# LM stops when an accepted step lowers the cost by less than this fraction of it.
_REL_TOLERANCE = 1e-4


@dataclass
class BundleResult:
    rot: np.ndarray            # [N,3,3] world->camera after stage 2
    trans: np.ndarray          # [N,3]
    points: np.ndarray         # [K,3] world points after stage 2
    points_stage1: np.ndarray  # [K,3] world points after stage 1 (raw poses)
    error_before: np.ndarray   # [N,K] reprojection error (px) of stage-1 points under the raw poses
    error_after: np.ndarray    # [N,K] reprojection error (px) after stage 2
    iterations: tuple[int, int] = (0, 0)  # LM iterations used by stage 1 and stage 2


def _skew(v: np.ndarray) -> np.ndarray:
    zero = np.zeros(v.shape[:-1])
    return np.stack([np.stack([zero, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], zero, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], zero], -1)], -2)


def left_jacobian(rotvec: np.ndarray) -> np.ndarray:
    """SO(3) left Jacobian [...,3,3]: R(r + d) ~ exp([J_l(r) d]x) R(r) for a small additive d."""
    theta2 = (rotvec**2).sum(-1)[..., None, None]
    theta = np.sqrt(theta2)
    small = theta2 < 1e-10
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    b = np.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - np.sin(safe)) / safe**3)
    k = _skew(rotvec)
    return np.eye(3) + a * k + b * (k @ k)


class _Projector:
    """Residuals, Huber weights and Jacobians of the reprojection term (OpenGL camera, see convention)."""

    def __init__(self, track_xy: np.ndarray, track_vis: np.ndarray, focal: float, cx: float, cy: float,
                 huber_px: float):
        self.xy = np.nan_to_num(np.asarray(track_xy, np.float64))
        self.vis = np.asarray(track_vis, bool)
        self.focal, self.cx, self.cy, self.delta = float(focal), float(cx), float(cy), float(huber_px)

    def camera(self, rot: np.ndarray, trans: np.ndarray, points: np.ndarray) -> np.ndarray:
        # matmul broadcasting ([N,1,3,3] @ [K,3,1]) is far faster than the equivalent einsum here
        return np.matmul(points, np.swapaxes(rot, 1, 2)) + trans[:, None]

    def residual(self, cam: np.ndarray) -> np.ndarray:
        depth = np.maximum(-cam[..., 2], 1e-6)
        u = self.cx + self.focal * cam[..., 0] / depth
        v = self.cy - self.focal * cam[..., 1] / depth
        return np.stack([u, v], -1) - self.xy

    def cost(self, cam: np.ndarray) -> float:
        """Huber cost over visible observations; +inf when a visible point is behind a camera."""
        if (cam[..., 2][self.vis] >= 0).any():
            return float("inf")
        err = np.linalg.norm(self.residual(cam), axis=-1)[self.vis]
        d = self.delta
        return float(np.where(err <= d, 0.5 * err**2, d * (err - 0.5 * d)).sum())

    def linearise(self, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sqrt-weighted residuals [N,K,2], d(uv)/d(cam) [N,K,2,3] times sqrt-weight, weights [N,K])."""
        res = self.residual(cam)
        err = np.linalg.norm(res, axis=-1)
        weight = np.where(err <= self.delta, 1.0, self.delta / np.maximum(err, 1e-12)) * self.vis
        sw = np.sqrt(weight)
        depth = -cam[..., 2]
        f_d = self.focal / depth
        dproj = np.zeros(cam.shape[:-1] + (2, 3))
        dproj[..., 0, 0] = f_d
        dproj[..., 0, 2] = f_d * cam[..., 0] / depth
        dproj[..., 1, 1] = -f_d
        dproj[..., 1, 2] = -f_d * cam[..., 1] / depth
        return res * sw[..., None], dproj * sw[..., None, None], weight


def _refine_points(proj: _Projector, rot: np.ndarray, trans: np.ndarray, points: np.ndarray,
                   max_iters: int) -> tuple[np.ndarray, int]:
    """Stage 1: per-point LM with the poses fixed (the K problems are independent, solved as a batch)."""
    points = points.copy()
    lam = np.full(len(points), 1e-3)

    def per_point_cost(cam: np.ndarray) -> np.ndarray:
        err = np.linalg.norm(proj.residual(cam), axis=-1)
        d = proj.delta
        c = np.where(err <= d, 0.5 * err**2, d * (err - 0.5 * d)) * proj.vis
        behind = ((cam[..., 2] >= 0) & proj.vis).any(axis=0)
        return np.where(behind, np.inf, c.sum(axis=0))

    cam = proj.camera(rot, trans, points)
    cost = per_point_cost(cam)
    it = 0
    for it in range(1, max_iters + 1):
        res_w, dproj_w, _ = proj.linearise(cam)
        jac = np.matmul(dproj_w, rot[:, None])                      # d(uv)/dX [N,K,2,3]
        n_frames, n_pts = jac.shape[:2]
        jx = np.ascontiguousarray(jac.transpose(1, 0, 2, 3)).reshape(n_pts, 2 * n_frames, 3)
        hess = np.matmul(jx.transpose(0, 2, 1), jx)
        rx = np.ascontiguousarray(res_w.transpose(1, 0, 2)).reshape(n_pts, -1, 1)
        grad = np.matmul(jx.transpose(0, 2, 1), rx)[..., 0]
        diag = np.maximum(np.diagonal(hess, axis1=1, axis2=2), 1e-9)
        step = -np.linalg.solve(hess + lam[:, None, None] * np.eye(3) * diag[:, None], grad[..., None])[..., 0]
        new_cam = proj.camera(rot, trans, points + step)
        new_cost = per_point_cost(new_cam)
        better = new_cost < cost
        points[better] += step[better]
        cam[:, better] = new_cam[:, better]
        gain = np.where(better, cost - new_cost, 0.0)
        cost = np.where(better, new_cost, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0).clip(1e-9, 1e9)
        if (gain <= _REL_TOLERANCE * cost).all() and better.any():
            break
    return points, it


def _solve_banded_triangular(chol: np.ndarray, rhs: np.ndarray, transposed: bool) -> np.ndarray:
    """Solve R^T x = rhs (``transposed``) or R x = rhs, R upper banded (``cholesky_banded`` layout)."""
    x, info = dtbtrs(chol, rhs, uplo="U", trans="T" if transposed else "N")
    if info != 0:
        raise np.linalg.LinAlgError(f"banded triangular solve failed (info {info})")
    return x


class _JointSystem:
    """Normal equations of stage 2 at one linearisation point, solved by eliminating the poses.

    Unknown order: frame t's pose is [rotvec (3), translation (3)] at rows 6t..6t+5."""

    def __init__(self, n_frames: int, prior_scale: np.ndarray, smooth_weight: float, gauge_coeff: float,
                 anchor_weight: float = 0.0):
        self.n = n_frames
        # anchor prior: anchor_weight * scale_c^2 * (p_tc - p0_tc)^2 / 2 per frame and component. Tracks
        # on the upper face are nearly planar, so "head turns" and "camera turns in place + head slides"
        # explain them almost equally well; the per-frame fit to the whole 478-point mesh does not have
        # that ambiguity, and a weak pull towards it keeps the low-frequency motion where it belongs.
        self.anchor_scale = anchor_weight * prior_scale**2      # [6]
        # temporal prior: per component c, smooth_weight * scale_c^2 * D2^T D2, with D2 the
        # second-difference operator; D2^T D2 is pentadiagonal (offsets 0, 1, 2 frames = 0, 6, 12 rows).
        d2 = np.zeros((3, n_frames))
        if n_frames >= 3:
            for shift, coef in ((0, 1.0), (1, -2.0), (2, 1.0)):
                for shift2, coef2 in ((0, 1.0), (1, -2.0), (2, 1.0)):
                    off = shift2 - shift
                    if off >= 0:
                        d2[off, shift:shift + n_frames - 2] += coef * coef2
        self.smooth_band = d2                                    # [offset, frame] (upper, by frame)
        self.smooth_scale = smooth_weight * prior_scale**2       # [6]
        # gauge prior: residual_c = sqrt(gauge_coeff) * scale_c * mean_t(p_tc - p0_tc) -> rank-6 U U^T
        u = np.zeros((6 * n_frames, 6))
        for c in range(6):
            u[c::6, c] = np.sqrt(gauge_coeff) * prior_scale[c] / n_frames
        self.gauge_u = u

    def prior_gradient(self, params: np.ndarray, params0: np.ndarray) -> tuple[np.ndarray, float]:
        """Gradient [6N] and cost of the temporal and gauge priors at pose parameters [N,6]."""
        grad = np.zeros_like(params)
        cost = 0.0
        if self.n >= 3:
            d2 = params[2:] - 2 * params[1:-1] + params[:-2]
            wd2 = d2 * self.smooth_scale
            cost += 0.5 * float((d2 * wd2).sum())
            grad[2:] += wd2
            grad[1:-1] -= 2 * wd2
            grad[:-2] += wd2
        dev = params - params0
        grad += self.anchor_scale * dev
        cost += 0.5 * float((self.anchor_scale * dev * dev).sum())
        gauge = self.gauge_u.T @ dev.ravel()
        cost += 0.5 * float(gauge @ gauge)
        return grad.ravel() + self.gauge_u @ gauge, cost

    def solve(self, pose_blocks: np.ndarray, cross: np.ndarray, point_blocks: np.ndarray, grad_pose: np.ndarray,
              grad_points: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
        """LM step (pose [N,6], points [K,3]) of the damped normal equations, and its predicted gain.

        pose_blocks [N,6,6], cross [N,K,6,3], point_blocks [K,3,3] are the data term's J^T W J blocks."""
        n, k = self.n, point_blocks.shape[0]
        kd = 12  # band half-width: the temporal prior reaches 2 frames = 12 rows away
        band = np.zeros((kd + 1, 6 * n))  # upper banded storage: band[kd + i - j, j] = A[i, j]
        for i in range(6):
            for j in range(i, 6):
                band[kd + i - j, j::6] = pose_blocks[:, i, j]
        for off in range(3):
            for c in range(6):
                band[kd - 6 * off, 6 * off + c::6] += self.smooth_scale[c] * self.smooth_band[off, :n - off]
        for c in range(6):
            band[kd, c::6] += self.anchor_scale[c]
        # Marquardt damping, relative to the diagonal (+1e-9: a frame may see almost no points)
        diag_pose = band[kd].copy()
        band[kd] *= 1.0 + lam
        band[kd] += 1e-9
        chol = cholesky_banded(band, lower=False, check_finite=False)   # A = R^T R, R upper banded
        cross_mat = np.ascontiguousarray(cross.transpose(0, 2, 1, 3)).reshape(6 * n, 3 * k)
        u = self.gauge_u
        # With Y = R^-T B, B^T A^-1 B' = Y^T Y': one banded triangular solve instead of a full solve.
        y = _solve_banded_triangular(chol, np.concatenate([cross_mat, u, grad_pose[:, None]], axis=1), True)
        yc, yu, yg = y[:, :3 * k], y[:, 3 * k:3 * k + 6], y[:, -1]
        # Woodbury for the rank-6 gauge term M = A + U U^T:
        # B^T M^-1 B' = B^T A^-1 B' - (B^T A^-1 U) (I + U^T A^-1 U)^-1 (U^T A^-1 B')
        cap = np.eye(6) + yu.T @ yu
        cu = yc.T @ yu                                            # C^T A^-1 U   [3K,6]
        cap_inv_cu = np.linalg.solve(cap, cu.T)                   # [6,3K]
        gu = yg @ yu                                              # g^T A^-1 U   [6]
        blocks = point_blocks.copy()
        diag = np.arange(3)
        blocks[:, diag, diag] = blocks[:, diag, diag] * (1.0 + lam) + 1e-9
        schur = -(yc.T @ yc) + cu @ cap_inv_cu                    # D - C^T M^-1 C, D added below
        schur.reshape(k, 3, k, 3)[np.arange(k), :, np.arange(k), :] += blocks
        schur_rhs = -grad_points.ravel() + (yc.T @ yg - cu @ np.linalg.solve(cap, gu))
        # numpy's LAPACK, not scipy.linalg.cho_factor: scipy's threaded OpenBLAS spun for 0.3 s on a
        # 150x150 factorisation on the shared 2-core machine (numpy's takes milliseconds)
        d_points = np.linalg.solve(schur, schur_rhs)
        back = -grad_pose - cross_mat @ d_points
        # d_pose = M^-1 back = A^-1 back - A^-1 U cap^-1 U^T A^-1 back, with A^-1 U = R^-1 yu
        a_inv_back = cho_solve_banded((chol, False), back, check_finite=False)
        correction = yu @ np.linalg.solve(cap, yu.T @ _solve_banded_triangular(chol, back[:, None], True)[:, 0])
        d_pose = a_inv_back - _solve_banded_triangular(chol, correction[:, None], False)[:, 0]
        # the quadratic model's predicted cost decrease -g.h - h.H.h / 2 = (-g.h + lam h.D.h) / 2, with
        # D the undamped diagonal: the LM gain ratio compares the actual decrease with it
        diag_points = point_blocks[:, diag, diag].ravel()
        predicted = 0.5 * (-(grad_pose @ d_pose) - (grad_points.ravel() @ d_points)
                           + lam * ((diag_pose * d_pose**2).sum() + (diag_points * d_points**2).sum()))
        return d_pose.reshape(n, 6), d_points.reshape(k, 3), float(predicted)


def bundle_adjust(track_xy: np.ndarray, track_vis: np.ndarray, rot_raw: np.ndarray, trans_raw: np.ndarray,
                  points_init: np.ndarray, focal: float, cx: float, cy: float, iters_points: int = 200,
                  iters_joint: int = 600, huber_px: float = 1.0, smooth_weight: float = 1.0,
                  gauge_weight: float = 100.0, anchor_weight: float = 0.0) -> BundleResult:
    """Refine points, then points + poses, against tracks [N,K,2] visible where ``track_vis`` [N,K].

    ``iters_points`` / ``iters_joint`` cap the LM iterations of the two stages; both normally stop
    earlier, when a step lowers the cost by less than a 1e-7 fraction."""
    proj = _Projector(track_xy, track_vis, focal, cx, cy, huber_px)
    rot_raw = np.asarray(rot_raw, np.float64)
    trans_raw = np.asarray(trans_raw, np.float64)
    points1, it1 = _refine_points(proj, rot_raw, trans_raw, np.asarray(points_init, np.float64), iters_points)
    error_before = np.linalg.norm(proj.residual(proj.camera(rot_raw, trans_raw, points1)), axis=-1)

    n_frames = len(rot_raw)
    params0 = np.concatenate([matrix_to_rotvec(rot_raw), trans_raw], axis=1)   # [N,6]
    depth = float(-trans_raw[:, 2].mean())
    # pixels per radian of rotation and per world unit of translation, at the head's depth
    rot_scale, trans_scale = focal, focal / max(depth, 1e-6)
    prior_scale = np.array([rot_scale] * 3 + [trans_scale] * 3)
    n_obs = max(float(proj.vis.sum()), 1.0)
    system = _JointSystem(n_frames, prior_scale, smooth_weight, gauge_weight * n_obs / n_frames, anchor_weight)

    params, points = params0.copy(), points1.copy()

    def total_cost(p: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        rot = rotvec_to_matrix(p[:, :3])
        cam = proj.camera(rot, p[:, 3:], x)
        return proj.cost(cam) + system.prior_gradient(p, params0)[1], rot, cam

    cost, rot, cam = total_cost(params, points)
    lam, nu = 1e-4, 2.0
    it2 = 0
    for it2 in range(1, iters_joint + 1):
        res_w, dproj_w, _ = proj.linearise(cam)
        # d(cam)/d(rotvec) = -[R X]x J_l(r); d(cam)/d(trans) = I; d(cam)/dX = R
        rotated = cam - params[:, None, 3:]
        d_rot = -np.matmul(_skew(rotated), left_jacobian(params[:, :3])[:, None])      # [N,K,3,3]
        j_rot = np.matmul(dproj_w, d_rot)                                                # [N,K,2,3]
        j_pose = np.concatenate([j_rot, dproj_w], axis=-1)                               # [N,K,2,6]
        j_pt = np.matmul(dproj_w, rot[:, None])                                          # [N,K,2,3]
        # J^T J blocks as batched matmuls (numpy's einsum does not use BLAS for these: 10x slower)
        n_frames_, n_pts = j_pose.shape[:2]
        jp = j_pose.reshape(n_frames_, 2 * n_pts, 6)
        jx = np.ascontiguousarray(j_pt.transpose(1, 0, 2, 3)).reshape(n_pts, 2 * n_frames_, 3)
        pose_blocks = np.matmul(jp.transpose(0, 2, 1), jp)                                 # [N,6,6]
        point_blocks = np.matmul(jx.transpose(0, 2, 1), jx)                                # [K,3,3]
        cross = np.matmul(np.swapaxes(j_pose, -1, -2), j_pt)                               # [N,K,6,3]
        prior_grad, _ = system.prior_gradient(params, params0)
        grad_pose = np.matmul(jp.transpose(0, 2, 1), res_w.reshape(n_frames_, -1, 1))[..., 0].ravel() + prior_grad
        grad_points = np.matmul(jx.transpose(0, 2, 1),
                                np.ascontiguousarray(res_w.transpose(1, 0, 2)).reshape(n_pts, -1, 1))[..., 0]
        accepted = False
        while not accepted and lam < 1e8:
            d_pose, d_points, predicted = system.solve(pose_blocks, cross, point_blocks, grad_pose, grad_points, lam)
            new_cost, new_rot, new_cam = total_cost(params + d_pose, points + d_points)
            ratio = (cost - new_cost) / max(predicted, 1e-12)
            log.debug("LM step: lambda %.1e, cost %.2f -> %.2f (gain ratio %.2f)", lam, cost, new_cost, ratio)
            if new_cost < cost:
                accepted = True
                params, points, rot, cam = params + d_pose, points + d_points, new_rot, new_cam
                gain, cost = cost - new_cost, new_cost
                # Nielsen's damping update: shrink lambda by up to 3x when the quadratic model predicted
                # the decrease well, keep it when it did not (halving it blindly made every other step
                # overshoot on this problem).
                lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3), 1e-9)
                nu = 2.0
            else:
                lam *= nu
                nu *= 2.0
        if not accepted or gain <= _REL_TOLERANCE * cost:
            break
    error_after = np.linalg.norm(proj.residual(cam), axis=-1)
    log.debug("bundle adjustment: %d + %d LM iterations, final cost %.1f", it1, it2, cost)
    return BundleResult(rot=rot, trans=params[:, 3:].copy(), points=points, points_stage1=points1,
                        error_before=error_before, error_after=error_after, iterations=(it1, it2))
