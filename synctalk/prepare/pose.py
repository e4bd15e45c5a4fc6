"""Stage `pose` (Head-Sync Stabilizer): rigid head pose, flow keypoint tracks, bundle adjustment.

1. ``headpose.rigid``: subject rest shape from the rigid mesh points, focal-length search, per-frame
   perspective pose (``c2w_raw``).
2. ``headpose.tracks``: Shi-Tomasi + rigid-mesh keypoints on the upper face of the most typical frame,
   tracked by forward-backward-checked LK flow re-anchored to that frame (``track_xy``, ``track_vis``),
   on grey frames decoded once and cropped to the face's box over the whole video.
3. ``headpose.bundle``: points-only then joint bundle adjustment with a Huber loss and a light temporal
   prior, by Levenberg-Marquardt with the poses eliminated (Schur complement) (``c2w``, ``points3d``).
Conventions (world = head frame, OpenGL camera) are in ``headpose.convention``; ``pose.npz`` holds
c2w [N,4,4] f32, c2w_raw [N,4,4] f32, intrinsics [4] f32 (fx, fy, cx, cy), track_xy [N,K,2] f32,
track_vis [N,K] bool, points3d [K,3] f32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synctalk import subject as S
from synctalk.errors import InputError, StageError
from synctalk.log import get_logger
from synctalk.prepare.context import StageContext

log = get_logger("prepare.pose")


@dataclass(frozen=True)
class PoseConfig:
    focal_min: float = 300.0
    focal_max: float = 3000.0
    ba_iters_points: int = 200          # caps on the LM iterations of BA stage 1 and 2 (both stop at
    ba_iters_joint: int = 600           # convergence, ~15-30 iterations)
    # keypoints tracked (rigid mesh points + corners); K <= this. ~100 well-spread points pin 6 DoF per
    # frame amply, and BA and LK costs grow with K (K^2 for the BA's Schur complement)
    max_tracks: int = 100
    track_fb_threshold_px: float = 0.7  # forward-backward LK error above which a match is rejected
    track_max_unanchored: int = 8       # frames a point may coast on frame-to-frame flow alone
    ba_huber_px: float = 1.0            # Huber threshold of the reprojection loss
    ba_smooth_weight: float = 1.0       # temporal prior weight (1 ~ one keypoint's worth per frame)
    ba_anchor_weight: float = 0.05      # pull towards the per-frame mesh fit (breaks the planar-tracks ambiguity)
    min_track_visibility: float = 0.2   # drop tracks visible in fewer than this fraction of frames


def run(ctx: StageContext) -> dict[str, Any]:
    n = int(ctx.fact("n_frames"))
    width, height = int(ctx.fact("width")), int(ctx.fact("height"))
    cfg: PoseConfig = ctx.config.pose
    result = estimate_pose(ctx.root, n, width, height, cfg)
    from synctalk.io.atomic import save_npz

    save_npz(ctx.path(S.POSE), **result.pop("arrays"))
    return result


def estimate_pose(root: Path, n_frames: int, width: int, height: int, cfg: PoseConfig) -> dict[str, Any]:
    """Run the three steps on a subject directory; returns {"arrays": pose.npz content, facts...}."""
    from synctalk.prepare.headpose import bundle, rigid, tracks
    from synctalk.prepare.headpose.convention import (CONVENTION_NAME, WORLD_UNITS, pose_jitter, project,
                                                      w2c_to_c2w)

    lm = _load_landmarks(root / S.LANDMARKS, n_frames)
    cx, cy = width / 2.0, height / 2.0
    clock = _StepClock()
    fit = rigid.fit_rigid(lm["lms"], lm["detected"], width, height, cfg.focal_min, cfg.focal_max)
    clock.lap("rigid")
    c2w_raw = fit.c2w
    intrinsics = np.array([fit.focal, fit.focal, cx, cy], np.float64)

    # grey frames are read once, cropped to the box that holds the face in every frame
    box = tracks.face_box(lm["lms"], fit.valid, height, width)
    origin = np.array(box[:2], np.float64)
    gray = tracks.read_gray_crops(root / S.FRAMES, box)
    if len(gray) != n_frames:
        raise StageError(f"{S.FRAMES} has {len(gray)} frames but the decode stage reported {n_frames}")
    face_masks = _FaceMasks(lm["lms"], height, width)
    ref = rigid.reference_frame(fit.rot, fit.valid, fit.residual_px)
    x0, y0, x1, y1 = box
    lms_ref = lm["lms"][ref].copy()
    lms_ref[:, :2] -= origin
    seeds, n_mesh = tracks.pick_seeds(gray[ref], face_masks[ref][y0:y1, x0:x1], lms_ref, cfg.max_tracks)
    seeds = seeds + origin.astype(np.float32)
    if len(seeds) < 8:
        raise StageError(f"only {len(seeds)} trackable keypoints on the face in frame {ref}; "
                         "is the face too small or blurred?")
    points0 = rigid.backproject_to_rest_surface(seeds.astype(np.float64), fit.rest_shape, fit.rot[ref],
                                                fit.trans[ref], fit.focal, cx, cy)
    predicted = project(points0, c2w_raw, intrinsics)
    tr = tracks.track_keypoints(gray, face_masks, seeds, predicted, ref, n_mesh,
                                fb_threshold_px=cfg.track_fb_threshold_px,
                                max_unanchored=cfg.track_max_unanchored, origin=box[:2])
    clock.lap("tracks")  # including the grey decode and seed picking
    del gray
    keep = tr.visible.mean(axis=0) >= cfg.min_track_visibility
    xy, vis, points0 = tr.xy[:, keep], tr.visible[:, keep], points0[keep]
    if keep.sum() < 8:
        raise StageError(f"only {int(keep.sum())} keypoint tracks survived; head pose cannot be stabilised")

    ba = bundle.bundle_adjust(xy, vis, fit.rot, fit.trans, points0, fit.focal, cx, cy,
                              cfg.ba_iters_points, cfg.ba_iters_joint, huber_px=cfg.ba_huber_px,
                              smooth_weight=cfg.ba_smooth_weight, anchor_weight=cfg.ba_anchor_weight)
    clock.lap("bundle")
    c2w = w2c_to_c2w(ba.rot, ba.trans)
    jit_before, jit_after = pose_jitter(c2w_raw), pose_jitter(c2w)
    med_before = float(np.median(ba.error_before[vis]))
    med_after = float(np.median(ba.error_after[vis]))
    log.info("pose: focal %.0f px, %d tracks, reprojection median %.2f -> %.2f px, jitter %.4f -> %.4f "
             "(rigid %.1f s, tracks %.1f s, BA %.1f s)", fit.focal, len(points0), med_before, med_after,
             jit_before["total"], jit_after["total"], clock.wall["rigid"], clock.wall["tracks"], clock.wall["bundle"])
    arrays = {
        "c2w": c2w.astype(np.float32),
        "c2w_raw": c2w_raw.astype(np.float32),
        "intrinsics": intrinsics.astype(np.float32),
        "track_xy": xy.astype(np.float32),
        "track_vis": vis,
        "points3d": ba.points.astype(np.float32),
    }
    return {
        "arrays": arrays,
        "camera": {"focal": round(fit.focal, 3), "fx": round(fit.focal, 3), "fy": round(fit.focal, 3),
                   "cx": cx, "cy": cy, "width": width, "height": height,
                   "convention": CONVENTION_NAME, "world_units": WORLD_UNITS},
        "pose": {
            "reprojection_px_median_before": round(med_before, 4),
            "reprojection_px_median_after": round(med_after, 4),
            "jitter_before": round(jit_before["total"], 6),
            "jitter_after": round(jit_after["total"], 6),
            "jitter_rotation_before": round(jit_before["rotation"], 6),
            "jitter_rotation_after": round(jit_after["rotation"], 6),
            "jitter_translation_before": round(jit_before["translation"], 6),
            "jitter_translation_after": round(jit_after["translation"], 6),
            "landmark_reprojection_px_median": round(float(np.nanmedian(fit.residual_px)), 4),
            "n_tracks": int(len(points0)),
            "track_visible_fraction": round(float(vis.mean()), 4),
            "reference_frame": int(ref),
            "focal_search": [[f, c] for f, c in sorted(fit.focal_search)],
            "seconds": {k: round(v, 2) for k, v in clock.wall.items()},
            # CPU of the whole process: inside `synctalk prepare` this includes stages running
            # concurrently (background runs beside pose), so it is exact only for a standalone run
            "process_cpu_seconds": {k: round(v, 2) for k, v in clock.cpu.items()},
            "bundle_iterations": list(ba.iterations),
        },
    }


class _StepClock:
    """Wall and CPU (all threads of this process) seconds of consecutive steps: the machine is shared,
    so wall time alone says little about the stage's own cost."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[name], self.cpu[name] = wall - self._wall0, cpu - self._cpu0
        self._wall0, self._cpu0 = wall, cpu


class _FaceMasks:
    """face_masks[t] -> bool [H,W]: frame t's face oval, filled from its landmarks.

    This is exactly the parsing stage's FACE label (the same polygon fill), computed here so the pose
    stage needs only decode + landmarks and runs beside parsing instead of after it."""

    def __init__(self, lms: np.ndarray, height: int, width: int):
        self._lms, self._hw = lms, (height, width)

    def __getitem__(self, t: int) -> np.ndarray:
        from synctalk.prepare.parsing import face_mask

        return face_mask(self._lms[t, :, :2], *self._hw) > 0


def _load_landmarks(path: Path, n_frames: int) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise StageError(f"{path.name} is missing; the landmarks stage must run before pose")
    lms32, detected = S.load_landmarks(path)
    lms = lms32.astype(np.float64)
    if lms.ndim != 3 or lms.shape[1] < 468 or lms.shape[2] != 3 or len(lms) != n_frames:
        raise InputError(f"{path.name} has landmarks of shape {lms.shape}; expected [{n_frames},478,3]")
    return {"lms": lms, "detected": detected}
