"""Pose stage on synthetic heads with known poses and focal: projection, rigid fit, bundle adjustment."""

from __future__ import annotations

import numpy as np
import pytest

from synctalk.prepare.headpose import bundle, rigid
from synctalk.prepare.headpose.convention import (c2w_to_w2c, matrix_to_rotvec, pose_jitter, project,
                                                  rotvec_to_matrix, w2c_to_c2w)

FOCAL, CX, CY = 900.0, 256.0, 256.0


def head_points(n: int, rng: np.random.Generator) -> np.ndarray:
    """Points on the camera-facing half of a head-sized ellipsoid (eye corners 0.25 apart)."""
    direction = rng.normal(size=(n, 3))
    direction[:, 2] = np.abs(direction[:, 2]) + 0.3
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * np.array([0.35, 0.45, 0.3])


def angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    return np.degrees(np.linalg.norm(matrix_to_rotvec(r_a @ np.swapaxes(r_b, -1, -2)), axis=-1))


def test_project_follows_opengl_convention():
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = [0.0, 0.0, 2.0]  # camera at z=+2 looking down -z at the origin
    uv = project(np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.2, 0.0]]), c2w, [1000, 1000, 256, 256])
    np.testing.assert_allclose(uv[0], [[256, 256], [356, 256], [256, 156]])  # +x right, +y up (v down)
    r, t = c2w_to_w2c(w2c_to_c2w(rotvec_to_matrix(np.array([0.1, -0.2, 0.3])), np.array([1.0, 2.0, -3.0])))
    np.testing.assert_allclose(matrix_to_rotvec(r), [0.1, -0.2, 0.3], atol=1e-12)
    np.testing.assert_allclose(t, [1.0, 2.0, -3.0], atol=1e-12)


def synthetic_landmarks(n_frames: int, rng: np.random.Generator, noise_px: float = 0.5):
    """Mediapipe-like landmarks [N,478,3] of a rigid synthetic head seen under known poses."""
    shape = head_points(478, rng)
    shape[33], shape[263] = [-0.125, 0.02, 0.2], [0.125, 0.02, 0.2]
    shape -= shape[list(rigid.RIGID_IDS)].mean(axis=0)
    shape *= 0.25 / np.linalg.norm(shape[263] - shape[33])  # already the world frame of convention
    rotvec = rng.uniform(-1, 1, size=(n_frames, 3)) * np.radians([25, 25, 10])
    rot = rotvec_to_matrix(rotvec)
    trans = np.stack([rng.uniform(-0.15, 0.15, n_frames), rng.uniform(-0.1, 0.1, n_frames),
                      -rng.uniform(1.3, 1.7, n_frames)], axis=1)
    cam = np.einsum("nij,pj->npi", rot, shape) + trans[:, None]
    depth = -cam[..., 2]
    lms = np.empty((n_frames, 478, 3))
    lms[..., 0] = CX + FOCAL * cam[..., 0] / depth + rng.normal(0, noise_px, depth.shape)
    lms[..., 1] = CY - FOCAL * cam[..., 1] / depth + rng.normal(0, noise_px, depth.shape)
    # mediapipe z: relative depth in pixel units (weak perspective), larger = farther
    centre = depth.mean(axis=1, keepdims=True)
    lms[..., 2] = (depth - centre) * FOCAL / centre
    return lms, rot, trans, shape


def test_rigid_fit_recovers_pose_and_focal():
    rng = np.random.default_rng(0)
    lms, rot, trans, shape = synthetic_landmarks(150, rng)
    fit = rigid.fit_rigid(lms, np.ones(len(lms), bool), 512, 512, 300.0, 3000.0)
    assert abs(fit.focal / FOCAL - 1) < 0.05, fit.focal
    # The fit's world frame may differ from the truth by a rotation (gauge); relative rotations may not.
    rel_true = rot @ np.swapaxes(rot[:1], -1, -2)
    rel_fit = fit.rot @ np.swapaxes(fit.rot[:1], -1, -2)
    assert angle_deg(rel_fit, rel_true).max() < 1.0
    # World origin = rigid centroid, scale = eye corners 0.25 apart in both: translations comparable.
    rel_err = np.linalg.norm(fit.trans - trans, axis=1) / np.linalg.norm(trans, axis=1)
    assert np.median(rel_err) < 0.02 and rel_err.max() < 0.04, (np.median(rel_err), rel_err.max())
    assert np.nanmedian(fit.residual_px) < 1.0
    # reprojection through the reference projection reproduces the landmarks
    uv = project(fit.rest_shape[list(rigid.RIGID_IDS)], fit.c2w, [fit.focal, fit.focal, CX, CY])
    assert np.median(np.linalg.norm(uv - lms[:, list(rigid.RIGID_IDS), :2], axis=-1)) < 1.0


def test_rigid_fit_rejects_faceless_video():
    from synctalk.errors import InputError

    with pytest.raises(InputError):
        rigid.fit_rigid(np.zeros((20, 478, 3)), np.zeros(20, bool), 512, 512, 300.0, 3000.0)


def test_bundle_adjustment_beats_per_frame_fit():
    rng = np.random.default_rng(1)
    n, k = 100, 50
    points = head_points(k, rng)
    t = np.arange(n)
    rotvec = np.stack([0.2 * np.sin(t / 17), 0.3 * np.sin(t / 23 + 1), 0.05 * np.sin(t / 11)], 1)
    rot = rotvec_to_matrix(rotvec)
    trans = np.stack([0.05 * np.sin(t / 19), 0.03 * np.cos(t / 29), -1.5 + 0.05 * np.sin(t / 31)], 1)
    xy = project(points, w2c_to_c2w(rot, trans), [FOCAL, FOCAL, CX, CY])
    xy += rng.normal(0, 0.5, xy.shape)
    outliers = rng.random((n, k)) < 0.05
    xy[outliers] += rng.uniform(-25, 25, (int(outliers.sum()), 2))
    vis = rng.random((n, k)) < 0.9
    # per-frame fit: each frame alone, against a slightly wrong shape (as the rest shape would be)
    shape_guess = points + rng.normal(0, 0.01, points.shape)
    uv_c = np.stack([xy[..., 0] - CX, xy[..., 1] - CY], -1)
    rot0 = rotvec_to_matrix(rotvec + rng.normal(0, 0.02, rotvec.shape))
    r_pf, t_pf = [], []
    for i in range(n):  # per frame, only its visible points
        m = vis[i]
        r_i, t_i, _ = rigid.refine_poses(shape_guess[m], uv_c[i:i + 1, m], rot0[i:i + 1], trans[i:i + 1] * 1.02,
                                         FOCAL, iterations=15)
        r_pf.append(r_i[0])
        t_pf.append(t_i[0])
    r_pf, t_pf = np.array(r_pf), np.array(t_pf)
    result = bundle.bundle_adjust(xy, vis, r_pf, t_pf, shape_guess, FOCAL, CX, CY, 100, 200)
    # Compare head motion between frames 10 apart: invariant to the world-frame gauge, which BA pins
    # to the mean of the (here consistently biased) per-frame poses.
    def motion_error(r_est: np.ndarray) -> np.ndarray:
        rel_est = r_est[10:] @ np.swapaxes(r_est[:-10], -1, -2)
        rel_true = rot[10:] @ np.swapaxes(rot[:-10], -1, -2)
        return angle_deg(rel_est, rel_true)

    err_pf, err_ba = motion_error(r_pf), motion_error(result.rot)
    assert err_ba.mean() < 0.5 * err_pf.mean(), (err_ba.mean(), err_pf.mean())
    assert np.median(result.error_after[vis & ~outliers]) < 0.8
    assert pose_jitter(w2c_to_c2w(result.rot, result.trans))["total"] < pose_jitter(w2c_to_c2w(r_pf, t_pf))["total"]


def test_left_jacobian_matches_finite_differences():
    # BA updates rotation vectors additively; its Jacobian relies on R(r + d) ~ exp([J_l(r) d]x) R(r)
    rng = np.random.default_rng(2)
    for r in (np.array([0.3, -0.5, 0.2]), np.array([1e-7, 0.0, -2e-7]), rng.normal(size=3)):
        d = 1e-6 * rng.normal(size=3)
        exact = rotvec_to_matrix(r + d) @ rotvec_to_matrix(r).T
        predicted = rotvec_to_matrix(bundle.left_jacobian(r) @ d)
        np.testing.assert_allclose(exact, predicted, atol=1e-11)
        assert np.abs(exact - np.eye(3)).max() > 1e-8  # the step is not lost in rounding
