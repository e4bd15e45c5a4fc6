"""Per-frame rigid head pose from face-mesh landmarks: rest shape, perspective pose, focal search.

1. Rest shape: the mesh points that do not move with speech or expression (``RIGID_IDS``: forehead,
   nose bridge and tip, eye corners, cheekbones; no lips, jaw, eyelids or brows) are aligned across all
   frames by generalised Procrustes (similarity) in mediapipe's pixel-3D space; the aligned average of
   every mesh point is the subject's rest shape, then moved into the world frame of ``convention``.
2. Pose: for a focal length f, each frame's pose starts from the weak-perspective Procrustes fit
   (depth = f / scale) and is refined by batched Levenberg-Marquardt on the 2D reprojection error of
   the rigid points (mediapipe's z is used only for the rest shape and the initial pose).
3. Focal: golden-section search on log f over [focal_min, focal_max]; for each candidate the rest
   shape is re-triangulated under perspective and all poses re-fitted (``refine_rest_shape``); the cost
   is the RMS reprojection error of the rigid points on a frame subsample.
Everything is vectorised over frames, so a 1779-frame video takes about a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from synctalk.errors import InputError
from synctalk.log import get_logger
from synctalk.prepare.headpose.convention import EYE_CORNER_DISTANCE, rotvec_to_matrix, w2c_to_c2w

log = get_logger("prepare.pose")

# Mediapipe face-mesh ids of points rigidly attached to the skull (canonical-mesh topology).
FOREHEAD_IDS = (10, 151, 9, 109, 67, 338, 297, 108, 337, 69, 299, 104, 333)
NOSE_IDS = (168, 6, 197, 195, 5, 4, 1, 45, 275, 122, 351)
EYE_CORNER_IDS = (33, 133, 362, 263, 130, 359, 243, 463)
CHEEKBONE_IDS = (116, 117, 118, 345, 346, 347, 50, 280, 123, 352, 143, 372)
RIGID_IDS = FOREHEAD_IDS + NOSE_IDS + EYE_CORNER_IDS + CHEEKBONE_IDS
OUTER_EYE_CORNERS = (33, 263)

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass
class RigidFit:
    rest_shape: np.ndarray          # [478, 3] all mesh points in world units (convention.py)
    rot: np.ndarray                 # [N, 3, 3] world->camera rotation per frame
    trans: np.ndarray               # [N, 3] world->camera translation per frame
    focal: float
    residual_px: np.ndarray         # [N] median reprojection error of the rigid points per frame
    valid: np.ndarray               # [N] bool, frames whose landmarks were fitted (others interpolated)
    focal_search: list[tuple[float, float]] = field(default_factory=list)  # (focal, cost px) evaluated

    @property
    def c2w(self) -> np.ndarray:
        return w2c_to_c2w(self.rot, self.trans)


def valid_landmark_frames(lms: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Frames with usable landmarks: detected, or gap-filled (finite, not collapsed to one point)."""
    finite = np.isfinite(lms).all(axis=(1, 2))
    spread = np.where(finite, np.nan_to_num(lms[..., :2]).std(axis=1).max(axis=1), 0.0)
    return (np.asarray(detected, bool) | (spread > 1.0)) & finite & (spread > 1.0)


def image_centred(lms: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Mediapipe pixels (x right, y down, z away from camera) -> (x right, y up, z towards camera)."""
    out = np.empty(lms.shape, np.float64)
    out[..., 0] = lms[..., 0] - cx
    out[..., 1] = cy - lms[..., 1]
    out[..., 2] = -lms[..., 2]
    return out


def similarity_align(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Umeyama: scale s [B], rotation R [B,3,3], offset T [B,3] with dst ~ s R src + T.

    src: [M,3] or [B,M,3]; dst: [B,M,3]."""
    src = np.broadcast_to(src, dst.shape)
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=1, keepdims=True)
    a = src - mu_s
    b = dst - mu_d
    cov = np.einsum("bmi,bmj->bij", b, a)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones_like(sig)
    fix[:, 2] = d
    rot = (u * fix[:, None, :]) @ vt
    scale = (sig * fix).sum(axis=1) / (a**2).sum(axis=(1, 2))
    offset = mu_d[:, 0] - scale[:, None] * np.einsum("bij,bj->bi", rot, mu_s[:, 0])
    return scale, rot, offset


def build_rest_shape(points3d: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Rest shape [P,3] in world units from image-centred mesh points [N,P,3] of valid frames."""
    rigid = list(RIGID_IDS)
    ref = np.median(points3d[:, rigid], axis=0)
    for _ in range(iterations):
        s, r, o = similarity_align(ref, points3d[:, rigid])  # frame ~ s R ref + o
        # invert it to bring every frame (all points) into the reference's frame
        aligned = np.einsum("bji,bmj->bmi", r, points3d - o[:, None]) / s[:, None, None]
        ref = aligned[:, rigid].mean(axis=0)
    rest = aligned.mean(axis=0)
    return canonicalise(rest)


def canonicalise(rest: np.ndarray) -> np.ndarray:
    """Move a rest shape into the world frame of ``convention``: centre, scale and axes."""
    rest = rest - rest[list(RIGID_IDS)].mean(axis=0)
    a, b = OUTER_EYE_CORNERS
    x_axis = rest[b] - rest[a]
    rest = rest * (EYE_CORNER_DISTANCE / np.linalg.norm(x_axis))
    x_axis = x_axis / np.linalg.norm(x_axis)
    # +z: the average viewing direction (the Procrustes reference is image-aligned, so its +z points at
    # the camera), made orthogonal to the eye line.
    z_axis = np.array([0.0, 0.0, 1.0]) - x_axis[2] * x_axis
    z_axis /= np.linalg.norm(z_axis)
    y_axis = np.cross(z_axis, x_axis)
    basis = np.stack([x_axis, y_axis, z_axis])  # rows: new axes in old coordinates
    return rest @ basis.T


def weak_perspective_poses(rest_rigid: np.ndarray, obs3d: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Initial world->camera poses from a similarity fit of the rest shape to image-centred points."""
    s, r, o = similarity_align(rest_rigid, obs3d)
    depth = focal / s
    trans = np.stack([o[:, 0] / s, o[:, 1] / s, -depth], axis=1)
    return r, trans


def project_w2c(points: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Image-centred projection (u right, v down, relative to the principal point) and camera coords."""
    cam = np.matmul(points, np.swapaxes(rot, 1, 2)) + trans[:, None]  # matmul: einsum is ~10x slower here
    z = cam[..., 2]
    uv = np.empty(cam.shape[:-1] + (2,))
    uv[..., 0] = -focal * cam[..., 0] / z
    uv[..., 1] = focal * cam[..., 1] / z
    return uv, cam


def refine_poses(points: np.ndarray, uv_obs: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float,
                 iterations: int = 10, huber_px: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt on 2D reprojection (image-centred, v down) of fixed ``points``.

    Returns refined (rot, trans, per-point residual norms [B,M])."""
    rot = rot.copy()
    trans = trans.copy()
    lam = np.full(len(rot), 1e-3)

    def cost_of(r: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uv, cam = project_w2c(points, r, t, focal)
        res = uv - uv_obs
        norm = np.linalg.norm(res, axis=-1)
        # Huber cost per frame (robust to a few badly placed landmarks)
        per = np.where(norm <= huber_px, 0.5 * norm**2, huber_px * (norm - 0.5 * huber_px))
        return per.sum(axis=1), res, cam

    cost, res, cam = cost_of(rot, trans)
    n_frames, n_pts = res.shape[:2]
    eye6 = np.eye(6)
    for _ in range(iterations):
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        rx, ry, rz = (cam - trans[:, None]).transpose(2, 0, 1)   # R X
        # d(u,v)/d(cam) for u = -f x/z, v = f y/z; times d(cam)/d(w, t) with the left perturbation
        # R <- exp([w]) R (d(cam)/dw = -[R X]x) and d(cam)/dt = I, written out element-wise
        # (building it with np.stack and batched 2x3 @ 3x6 products cost 3x more)
        du = (-focal / z, np.zeros_like(z), focal * x / z**2)
        dv = (np.zeros_like(z), focal / z, -focal * y / z**2)
        jac = np.empty((n_frames, n_pts, 2, 6))
        for row, (d0, d1, d2) in enumerate((du, dv)):
            jac[..., row, 0] = d1 * (-rz) + d2 * ry
            jac[..., row, 1] = d0 * rz + d2 * (-rx)
            jac[..., row, 2] = d0 * (-ry) + d1 * rx
            jac[..., row, 3], jac[..., row, 4], jac[..., row, 5] = d0, d1, d2
        norm = np.linalg.norm(res, axis=-1)
        weight = np.where(norm <= huber_px, 1.0, huber_px / np.maximum(norm, 1e-12))
        jw = (jac * weight[..., None, None]).reshape(n_frames, 2 * n_pts, 6)
        jf = jac.reshape(n_frames, 2 * n_pts, 6)
        hess = np.matmul(jw.transpose(0, 2, 1), jf)
        grad = np.matmul(jw.transpose(0, 2, 1), res.reshape(n_frames, 2 * n_pts, 1))[..., 0]
        damp = hess + lam[:, None, None] * eye6 * np.maximum(np.diagonal(hess, axis1=1, axis2=2), 1e-9)[:, None]
        step = -np.linalg.solve(damp, grad[..., None])[..., 0]
        new_rot = rotvec_to_matrix(step[:, :3]) @ rot
        new_trans = trans + step[:, 3:]
        new_cost, new_res, new_cam = cost_of(new_rot, new_trans)
        better = (new_cost < cost) & np.isfinite(new_cost) & (new_cam[..., 2] < 0).all(axis=1)
        rot[better], trans[better] = new_rot[better], new_trans[better]
        cost[better], res[better], cam[better] = new_cost[better], new_res[better], new_cam[better]
        lam = np.where(better, lam * 0.3, lam * 10.0).clip(1e-7, 1e7)
    return rot, trans, np.linalg.norm(res, axis=-1)


def fit_at_focal(rest: np.ndarray, obs3d: np.ndarray, focal: float, iterations: int = 10
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame poses of a fixed rest shape: weak-perspective start, then LM on the rigid points."""
    rigid = list(RIGID_IDS)
    rot, trans = weak_perspective_poses(rest[rigid], obs3d[:, rigid], focal)
    uv_obs = np.stack([obs3d[:, rigid, 0], -obs3d[:, rigid, 1]], axis=-1)  # image-centred, v down
    return refine_poses(rest[rigid], uv_obs, rot, trans, focal, iterations)


def triangulate(rot: np.ndarray, trans: np.ndarray, uv: np.ndarray, focal: float) -> np.ndarray:
    """Linear least-squares 3D points [P,3] from poses [N] and image-centred (v down) observations [N,P,2].

    From u = -f Xc/Zc and v = f Yc/Zc with Xc = R X + t: (u r3 + f r1) X = -(u t3 + f t1) and
    (v r3 - f r2) X = -(v t3 - f t2), stacked over frames and solved per point."""
    u, v = uv[..., 0], uv[..., 1]
    r1, r2, r3 = rot[:, None, 0], rot[:, None, 1], rot[:, None, 2]
    t = trans[:, None]
    rows = np.concatenate([u[..., None] * r3 + focal * r1, v[..., None] * r3 - focal * r2])
    rhs = np.concatenate([-(u * t[..., 2] + focal * t[..., 0]), -(v * t[..., 2] - focal * t[..., 1])])
    rows_p = np.ascontiguousarray(rows.transpose(1, 0, 2))             # [P,2N,3]: per-point BLAS products
    normal = np.matmul(rows_p.transpose(0, 2, 1), rows_p)
    return np.linalg.solve(normal, np.matmul(rows_p.transpose(0, 2, 1), rhs.T[..., None]))[..., 0]


def refine_rest_shape(rest: np.ndarray, obs3d: np.ndarray, focal: float, alternations: int = 3
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Alternate pose fitting and triangulation so the rest shape is consistent with perspective at
    ``focal`` (mediapipe's z is a weak-perspective depth: used as is, it favours an infinite focal).

    Returns (rest shape, rot, trans, rigid-point residual norms [N,M])."""
    rigid = list(RIGID_IDS)
    uv = np.stack([obs3d[..., 0], -obs3d[..., 1]], axis=-1)
    for _ in range(alternations):
        rot, trans, _ = fit_at_focal(rest, obs3d, focal, iterations=8)
        new = triangulate(rot, trans, uv, focal)
        # keep the world frame: similarity-align the new shape's rigid points onto the previous ones
        s, r, o = similarity_align(new[rigid], rest[rigid][None])
        rest = s[0] * new @ r[0].T + o[0]
    rot, trans, err = fit_at_focal(rest, obs3d, focal, iterations=8)
    return rest, rot, trans, err


def search_focal(rest: np.ndarray, obs3d: np.ndarray, focal_min: float, focal_max: float,
                 steps: int = 10, max_frames: int = 150) -> tuple[float, list[tuple[float, float]]]:
    """Golden-section search of log focal minimising the RMS reprojection error of the rigid points,
    with the rest shape re-triangulated and all poses re-fitted for each candidate."""
    subset = obs3d[np.linspace(0, len(obs3d) - 1, min(max_frames, len(obs3d))).round().astype(int)]
    history: list[tuple[float, float]] = []

    def cost(log_f: float) -> float:
        f = math.exp(log_f)
        *_, err = refine_rest_shape(rest, subset, f, alternations=2)
        value = float(np.sqrt(np.mean(err**2)))
        history.append((round(f, 2), round(value, 5)))
        return value

    lo, hi = math.log(focal_min), math.log(focal_max)
    a = hi - GOLDEN * (hi - lo)
    b = lo + GOLDEN * (hi - lo)
    ca, cb = cost(a), cost(b)
    for _ in range(steps):
        if ca < cb:
            hi, b, cb = b, a, ca
            a = hi - GOLDEN * (hi - lo)
            ca = cost(a)
        else:
            lo, a, ca = a, b, cb
            b = lo + GOLDEN * (hi - lo)
            cb = cost(b)
    best = min(history, key=lambda fc: fc[1])[0]
    return float(best), history


def fit_rigid(lms: np.ndarray, detected: np.ndarray, width: int, height: int,
              focal_min: float, focal_max: float, focal: float | None = None) -> RigidFit:
    """Rest shape, focal length (searched unless given) and per-frame pose from mesh landmarks."""
    lms = np.asarray(lms, np.float64)
    valid = valid_landmark_frames(lms, detected)
    if valid.sum() < 10:
        raise InputError(f"only {int(valid.sum())} frames have face landmarks; need at least 10 for head pose")
    cx, cy = width / 2.0, height / 2.0
    obs3d = image_centred(lms[valid], cx, cy)
    rest = build_rest_shape(obs3d)
    history: list[tuple[float, float]] = []
    if focal is None:
        focal, history = search_focal(rest, obs3d, focal_min, focal_max)
        log.info("focal search: %.1f px (%d candidates in [%.0f, %.0f])", focal, len(history), focal_min, focal_max)
    rest, _, _, _ = refine_rest_shape(rest, obs3d, focal, alternations=3)
    rest = canonicalise(rest)
    rot_v, trans_v, err = fit_at_focal(rest, obs3d, focal, iterations=12)
    n = len(lms)
    rot = np.empty((n, 3, 3))
    trans = np.empty((n, 3))
    rot[valid], trans[valid] = rot_v, trans_v
    if not valid.all():
        rot, trans = _interpolate_missing(rot, trans, valid)
    residual = np.full(n, np.nan)
    residual[valid] = np.median(err, axis=1)
    return RigidFit(rest_shape=rest, rot=rot, trans=trans, focal=float(focal), residual_px=residual,
                    valid=valid, focal_search=history)


def _interpolate_missing(rot: np.ndarray, trans: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill frames without landmarks by interpolating neighbouring poses (rotation vectors, positions)."""
    from synctalk.prepare.headpose.convention import matrix_to_rotvec

    idx = np.flatnonzero(valid)
    frames = np.arange(len(rot))
    rv = matrix_to_rotvec(rot[valid])
    rv_all = np.stack([np.interp(frames, idx, rv[:, k]) for k in range(3)], axis=1)
    t_all = np.stack([np.interp(frames, idx, trans[valid][:, k]) for k in range(3)], axis=1)
    out_rot = rot.copy()
    out_rot[~valid] = rotvec_to_matrix(rv_all[~valid])
    t_out = trans.copy()
    t_out[~valid] = t_all[~valid]
    return out_rot, t_out


def backproject_to_rest_surface(uv: np.ndarray, rest: np.ndarray, rot: np.ndarray, trans: np.ndarray,
                                focal: float, cx: float, cy: float) -> np.ndarray:
    """World points [K,3] for pixels ``uv`` [K,2] of one frame, at the depth of the posed rest shape.

    The camera depth of the face surface at a pixel is a plane fitted (distance-weighted least squares)
    to the depths of the 8 nearest projected surface mesh points (the 468 without the irises); mesh
    points are ~5-10 px apart, so this matches linear interpolation over the mesh, and it also
    extrapolates sensibly just outside it. (scipy's Delaunay-based interpolator was avoided: its first
    call cost 7 s of CPU here.)"""
    surface = rest[:468]
    cam = surface @ rot.T + trans
    proj = np.stack([cx - focal * cam[:, 0] / cam[:, 2], cy + focal * cam[:, 1] / cam[:, 2]], axis=1)
    depth = -cam[:, 2]
    z = _local_plane_depth(np.asarray(uv, np.float64), proj, depth)
    # invert u = cx + f Xc/(-Zc), v = cy - f Yc/(-Zc) at depth d = -Zc
    cam_pts = np.stack([(uv[:, 0] - cx) * z / focal, -(uv[:, 1] - cy) * z / focal, -z], axis=1)
    return (cam_pts - trans) @ rot  # R^T (Xc - t), row-vector form


def _local_plane_depth(uv: np.ndarray, proj: np.ndarray, depth: np.ndarray, neighbours: int = 8) -> np.ndarray:
    """Depth [K] at pixels uv [K,2]: weighted plane fit over the nearest projected points proj [P,2]."""
    dist = np.linalg.norm(uv[:, None] - proj[None], axis=-1)                 # [K,P]
    near = np.argpartition(dist, neighbours - 1, axis=1)[:, :neighbours]      # [K,n]
    offset = proj[near] - uv[:, None]                                          # [K,n,2]
    weight = 1.0 / (np.take_along_axis(dist, near, axis=1) + 1.0)             # [K,n]
    design = np.concatenate([np.ones(offset.shape[:-1] + (1,)), offset], axis=-1)  # [K,n,3]
    wd = design * weight[..., None]
    normal = np.matmul(np.swapaxes(wd, 1, 2), design) + 1e-6 * np.eye(3)
    rhs = np.matmul(np.swapaxes(wd, 1, 2), depth[near][..., None])
    plane = np.linalg.solve(normal, rhs)[..., 0]
    return plane[:, 0]  # the plane's value at offset 0, i.e. at uv


def reference_frame(rot: np.ndarray, valid: np.ndarray, residual_px: np.ndarray) -> int:
    """The valid frame whose head rotation is closest to the median rotation (ties: lower residual)."""
    from synctalk.prepare.headpose.convention import matrix_to_rotvec

    rv = matrix_to_rotvec(rot)
    median = np.median(rv[valid], axis=0)
    score = np.degrees(np.linalg.norm(rv - median, axis=1)) + 0.5 * np.nan_to_num(residual_px, nan=1e3)
    score[~valid] = np.inf
    return int(np.argmin(score))
