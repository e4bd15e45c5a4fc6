"""Camera and world conventions of ``pose.npz``; ``project`` is the single reference projection.

World = the subject's head frame (the rest shape built by ``rigid.py``):
  * origin at the centroid of the rest shape's rigid mesh points (forehead, nose bridge, eye corners,
    cheekbones: ``rigid.RIGID_IDS``);
  * scaled so the outer eye corners (mesh points 33 and 263) are ``EYE_CORNER_DISTANCE`` = 0.25 world
    units apart (a real adult's are ~9-10 cm apart, so one world unit is roughly 0.37-0.4 m);
  * +x from the subject's right eye corner (33, image left) to the left one (263, image right), i.e.
    left->right as seen in the image; +y up; +z out of the face, towards the camera at the mean pose.

Camera = OpenGL / NeRF convention: ``c2w`` [4,4] maps camera coordinates to world coordinates; the
camera looks down its -z axis, +y is up, +x is right. Pixels have y down, the principal point (cx, cy)
is the image centre, and a camera-space point (Xc, Yc, Zc) with Zc < 0 projects to

    u = cx + fx * Xc / (-Zc)
    v = cy - fy * Yc / (-Zc)

``intrinsics`` = [fx, fy, cx, cy] in pixels (fx == fy: square pixels, one focal length).
"""

from __future__ import annotations

import numpy as np

EYE_CORNER_DISTANCE = 0.25
CONVENTION_NAME = "opengl_c2w_head_world"
WORLD_UNITS = "head frame: origin at rigid-point centroid, outer eye corners (mesh 33, 263) 0.25 apart"


def project(points_world: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Project world points through OpenGL camera-to-world poses to pixel coordinates.

    points_world: [..., K, 3] (or [K, 3] shared by all poses); c2w: [..., 4, 4]; intrinsics: [4].
    Returns uv [..., K, 2] float64. Points behind the camera (Zc >= 0) give non-finite values."""
    points_world = np.asarray(points_world, np.float64)
    c2w = np.asarray(c2w, np.float64)
    fx, fy, cx, cy = (float(v) for v in np.asarray(intrinsics, np.float64).reshape(4))
    rot = c2w[..., :3, :3]
    centre = c2w[..., :3, 3]
    # camera coords = R^T (X - C); written as X R for row vectors (R^T applied on the left).
    cam = np.einsum("...kj,...ji->...ki", points_world - centre[..., None, :], rot)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = -cam[..., 2]
        depth = np.where(depth > 0, depth, np.nan)
        u = cx + fx * cam[..., 0] / depth
        v = cy - fy * cam[..., 1] / depth
    return np.stack([u, v], axis=-1)


def w2c_to_c2w(rot_w2c: np.ndarray, trans_w2c: np.ndarray) -> np.ndarray:
    """Invert world->camera (x_c = R x_w + t) into camera->world [..., 4, 4] matrices."""
    rot_w2c = np.asarray(rot_w2c, np.float64)
    trans_w2c = np.asarray(trans_w2c, np.float64)
    out = np.zeros(rot_w2c.shape[:-2] + (4, 4))
    rt = np.swapaxes(rot_w2c, -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, trans_w2c)
    out[..., 3, 3] = 1.0
    return out


def c2w_to_w2c(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``w2c_to_c2w``: returns (R [...,3,3], t [...,3]) with x_c = R x_w + t."""
    c2w = np.asarray(c2w, np.float64)
    rot = np.swapaxes(c2w[..., :3, :3], -1, -2)
    trans = -np.einsum("...ij,...j->...i", rot, c2w[..., :3, 3])
    return rot, trans


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula, batched: axis-angle [..., 3] -> rotation matrices [..., 3, 3]."""
    rotvec = np.asarray(rotvec, np.float64)
    theta = np.linalg.norm(rotvec, axis=-1)[..., None, None]
    k = _skew(rotvec)
    # sin(x)/x and (1-cos x)/x^2 with their Taylor series near 0 (avoids 0/0 for tiny rotations).
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + a * k + b * (k @ k)


def matrix_to_rotvec(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> axis-angle [..., 3] (angles in [0, pi])."""
    from scipy.spatial.transform import Rotation

    rot = np.asarray(rot, np.float64)
    flat = Rotation.from_matrix(rot.reshape(-1, 3, 3)).as_rotvec()
    return flat.reshape(rot.shape[:-2] + (3,))


def _skew(v: np.ndarray) -> np.ndarray:
    z = np.zeros(v.shape[:-1])
    return np.stack([
        np.stack([z, -v[..., 2], v[..., 1]], -1),
        np.stack([v[..., 2], z, -v[..., 0]], -1),
        np.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def pose_jitter(c2w: np.ndarray) -> dict[str, float]:
    """Mean norm of the second temporal difference of the camera's rotation vector and position.

    Rotation in radians (of the c2w rotation), position in world units; ``total`` uses the 6-vector
    [rotvec, position]. Head poses stay far from 180 degrees (the camera faces the head, c2w is near
    the identity rotation), so rotation vectors do not wrap and plain differences are meaningful."""
    c2w = np.asarray(c2w, np.float64)
    if len(c2w) < 3:
        return {"total": 0.0, "rotation": 0.0, "translation": 0.0}
    rv = matrix_to_rotvec(c2w[:, :3, :3])
    pos = c2w[:, :3, 3]
    d2r = rv[2:] - 2 * rv[1:-1] + rv[:-2]
    d2t = pos[2:] - 2 * pos[1:-1] + pos[:-2]
    return {
        "total": float(np.linalg.norm(np.concatenate([d2r, d2t], axis=1), axis=1).mean()),
        "rotation": float(np.linalg.norm(d2r, axis=1).mean()),
        "translation": float(np.linalg.norm(d2t, axis=1).mean()),
    }
