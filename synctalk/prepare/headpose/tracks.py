"""Keypoint tracks on the rigid part of the face, by pyramidal Lucas-Kanade optical flow.

Why not the original's scheme (dense flow from every frame to hard-coded frame 2, no visibility):
a single far-away reference fails under large pose change, and frame-to-frame flow alone drifts.
Here:
  * the reference frame is the one whose head pose is closest to the median pose (most typical view);
  * seeds are Shi-Tomasi corners inside the upper-face region of the reference frame (face label ∩
    hull of the rigid mesh points, minus dilated eyes and brows, which move with expression) plus the
    rigid mesh points themselves;
  * tracking runs outwards from the reference in both directions. In each frame a point is matched
    directly against the reference frame (no drift), starting from its previous position moved by the
    rigid pose's predicted motion; if that match fails its forward-backward check, frame-to-frame flow
    from the previous frame is tried (also forward-backward checked);
  * a point that cannot be re-anchored may coast on frame-to-frame flow for ``max_unanchored`` frames,
    then is marked invisible; invisible points are re-acquired from the pose prediction;
  * points outside the frame's face label are invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synctalk.log import get_logger, progress
from synctalk.prepare.headpose.rigid import RIGID_IDS

log = get_logger("prepare.pose")

RIGHT_EYE_IDS = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_EYE_IDS = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
RIGHT_BROW_IDS = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW_IDS = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)

_CROP_MARGIN_PX = 40
_LK_PARAMS = dict(winSize=(17, 17), maxLevel=2,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))


@dataclass
class Tracks:
    xy: np.ndarray          # [N, K, 2] float32 pixels (x right, y down); meaningless where not visible
    visible: np.ndarray     # [N, K] bool
    reference: int          # frame the seeds were picked in
    seeds_mesh: int         # how many of the K seeds are rigid mesh points (they come first)


def upper_face_mask(face: np.ndarray, lms: np.ndarray, margin_px: int = 6) -> np.ndarray:
    """Where rigid-skin keypoints may be picked: face ∩ rigid-point hull, minus dilated eyes and brows."""
    region = np.zeros_like(face, np.uint8)
    hull = cv2.convexHull(np.round(lms[list(RIGID_IDS), :2]).astype(np.int32))
    cv2.fillConvexPoly(region, hull, 1)
    region &= (face > 0).astype(np.uint8)
    holes = np.zeros_like(region)
    for ids in (RIGHT_EYE_IDS, LEFT_EYE_IDS, RIGHT_BROW_IDS, LEFT_BROW_IDS):
        cv2.fillConvexPoly(holes, cv2.convexHull(np.round(lms[list(ids), :2]).astype(np.int32)), 1)
    holes = cv2.dilate(holes, np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8))
    region[holes > 0] = 0
    return cv2.erode(region, np.ones((5, 5), np.uint8))


def pick_seeds(gray: np.ndarray, face: np.ndarray, lms: np.ndarray, max_tracks: int,
               min_distance: int = 8) -> tuple[np.ndarray, int]:
    """Seed points [K,2]: rigid mesh points inside the face, then corners of the upper face."""
    h, w = gray.shape
    mesh = lms[list(RIGID_IDS), :2].astype(np.float32)
    inside = (mesh[:, 0] >= 0) & (mesh[:, 0] < w) & (mesh[:, 1] >= 0) & (mesh[:, 1] < h)
    mesh = mesh[inside]
    iy, ix = np.clip(mesh[:, 1].astype(int), 0, h - 1), np.clip(mesh[:, 0].astype(int), 0, w - 1)
    mesh = mesh[face[iy, ix] > 0]
    mask = upper_face_mask(face, lms)
    budget = max(max_tracks - len(mesh), 0)
    corners = np.zeros((0, 2), np.float32)
    if budget and mask.any():
        found = cv2.goodFeaturesToTrack(gray, maxCorners=budget, qualityLevel=0.005,
                                        minDistance=min_distance, mask=mask * 255, blockSize=7)
        if found is not None:
            corners = found.reshape(-1, 2).astype(np.float32)
    return np.concatenate([mesh, corners]), len(mesh)


def face_box(lms: np.ndarray, valid: np.ndarray, height: int, width: int, margin: int = 48
             ) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the box holding every valid frame's face mesh, plus ``margin`` pixels.

    Tracking reads only this box: keypoints lie on the face, and LK needs a window plus a pyramid
    border around them."""
    pts = lms[valid][:, :468, :2].reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return 0, 0, width, height
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + margin + 1
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), width), min(int(y1), height)


def read_gray_crops(path, box: tuple[int, int, int, int]) -> np.ndarray:
    """Grey frames [N, y1-y0, x1-x0] uint8 of a video, cropped to ``box``.

    With PyAV the luma plane of the decoded YUV frame is used as is: no RGB conversion, no full-frame
    copy (RGB decode + cvtColor of every 512x512 frame took 2.5x longer). Luma is limited-range, which
    LK and the corner detector (relative quality threshold) do not care about."""
    x0, y0, x1, y1 = box
    try:
        import av
    except ImportError:  # the GPU machine has no PyAV
        from synctalk.io.video import iter_frames

        return np.stack([cv2.cvtColor(f[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY) for f in iter_frames(path)])
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "gray"):
                plane = frame.planes[0]
                luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                out.append(luma[y0:y1, x0:x1].copy())
            else:
                out.append(frame.to_ndarray(format="gray")[y0:y1, x0:x1].copy())
    return np.stack(out) if out else np.zeros((0, y1 - y0, x1 - x0), np.uint8)


def _lk(prev_img: np.ndarray, next_img: np.ndarray, pts: np.ndarray, guess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LK from prev to next starting at ``guess``, with a forward-backward check; returns (pts, fb error)."""
    pts = np.ascontiguousarray(pts, np.float32)
    guess = np.ascontiguousarray(guess, np.float32)
    fwd, st_f, _ = cv2.calcOpticalFlowPyrLK(prev_img, next_img, pts.reshape(-1, 1, 2), guess.reshape(-1, 1, 2).copy(),
                                            flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_LK_PARAMS)
    back, st_b, _ = cv2.calcOpticalFlowPyrLK(next_img, prev_img, fwd, pts.reshape(-1, 1, 2).copy(),
                                             flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_LK_PARAMS)
    fwd = fwd.reshape(-1, 2)
    err = np.linalg.norm(back.reshape(-1, 2) - pts, axis=1)
    err[(st_f.ravel() == 0) | (st_b.ravel() == 0) | ~np.isfinite(err)] = np.inf
    return fwd, err


def _crop_box(points: np.ndarray, h: int, w: int, margin: int) -> tuple[int, int, int, int]:
    finite = points[np.isfinite(points).all(axis=1)]
    x0, y0 = np.floor(finite.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(finite.max(axis=0)).astype(int) + margin + 1
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)


def track_keypoints(gray_frames: np.ndarray, face_masks, seeds: np.ndarray, predicted: np.ndarray,
                    reference: int, seeds_mesh: int = 0, fb_threshold_px: float = 0.7,
                    max_unanchored: int = 8, origin: tuple[int, int] = (0, 0)) -> Tracks:
    """Track ``seeds`` [K,2] (picked in frame ``reference``) through ``gray_frames`` [N,H,W] uint8.

    ``face_masks[t]`` is frame t's face region (nonzero = face). ``predicted`` [N,K,2] is where the
    rigid per-frame pose puts each seed: it guides the search (its frame-to-frame motion) and
    re-acquires lost points (its position plus the point's last known offset from it).
    ``gray_frames`` may be a crop whose top-left corner is pixel ``origin`` (x, y) of the frames;
    seeds, predictions, face masks and the returned tracks are in full-frame pixels."""
    n, h, w = gray_frames.shape
    k = len(seeds)
    xy = np.zeros((n, k, 2), np.float32)
    vis = np.zeros((n, k), bool)
    shift = np.asarray(origin, np.float32)
    ox, oy = int(origin[0]), int(origin[1])
    seeds = seeds.astype(np.float32) - shift
    predicted = predicted.astype(np.float32) - shift
    xy[reference], vis[reference] = seeds + shift, True
    ref_img = gray_frames[reference]
    order = [range(reference + 1, n), range(reference - 1, -1, -1)]
    steps = progress((t for part in order for t in part), desc="pose: keypoint tracks", total=n - 1, unit="frame")
    state: dict[int, tuple] = {}
    for t in steps:
        prev = t - 1 if t > reference else t + 1
        if prev == reference or prev not in state:
            # start of a direction: positions, offsets from the prediction, frames since last anchoring
            state = {prev: (seeds.astype(np.float32), np.zeros((k, 2), np.float32), np.zeros(k, int),
                            gray_frames[prev])}
        pos_prev, offset, unanchored, prev_img = state.pop(prev)
        img = gray_frames[t]
        was_vis = vis[prev]
        guess = np.where(was_vis[:, None], pos_prev + (predicted[t] - predicted[prev]), predicted[t] + offset)
        guess = guess.astype(np.float32)
        # LK only needs the face: crop all three images to one box around every point involved
        # (5x less pyramid work than full 512x512 frames; OpenCV's Python API cannot reuse pyramids).
        box = _crop_box(np.concatenate([seeds, pos_prev, guess]), h, w, _CROP_MARGIN_PX)
        x0, y0, x1, y1 = box
        o = np.array([x0, y0], np.float32)
        crop_prev, crop_img, crop_ref = prev_img[y0:y1, x0:x1], img[y0:y1, x0:x1], ref_img[y0:y1, x0:x1]
        # re-anchor against the reference first (no drift); frame-to-frame flow only for the failures
        anchored, an_err = _lk(crop_ref, crop_img, seeds - o, guess - o)
        anchored += o
        ok_anchor = an_err < fb_threshold_px
        ff = guess.copy()
        ok_ff = np.zeros(k, bool)
        retry = np.flatnonzero(~ok_anchor & was_vis)
        if len(retry):
            moved, ff_err = _lk(crop_prev, crop_img, pos_prev[retry] - o, guess[retry] - o)
            ff[retry] = moved + o
            ok_ff[retry] = ff_err < fb_threshold_px
        unanchored = np.where(ok_anchor, 0, unanchored + 1)
        coast = ~ok_anchor & ok_ff & (unanchored <= max_unanchored)
        pos = np.where(ok_anchor[:, None], anchored, np.where(coast[:, None], ff, guess)).astype(np.float32)
        inside = (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
        face = np.asarray(face_masks[t]) > 0
        iy = np.clip(np.round(pos[:, 1]).astype(int), 0, h - 1) + oy
        ix = np.clip(np.round(pos[:, 0]).astype(int), 0, w - 1) + ox
        visible = (ok_anchor | coast) & inside & face[iy, ix]
        xy[t], vis[t] = pos + shift, visible
        offset = np.where(visible[:, None], pos - predicted[t], offset).astype(np.float32)
        state[t] = (pos, offset, unanchored, img)
    log.info("tracked %d keypoints (%d mesh, %d corners) from reference frame %d; %.1f%% visible",
             k, seeds_mesh, k - seeds_mesh, reference, 100.0 * vis.mean())
    return Tracks(xy=xy, visible=vis, reference=reference, seeds_mesh=seeds_mesh)
