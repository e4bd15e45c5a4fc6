"""A prepared subject as device-resident training data for the NeRF head.

Images are stored as uint8 on the training device (3 bytes per pixel per image kind), converted to
float per sampled ray, so a 1779-frame 512^2 subject costs ~1.4 GB per image kind on the GPU and no
host<->device traffic during training.

Per frame:
  gt      the training target: the frame with its background replaced by the clean plate
          (``synctalk.prepare.background.composite_gt``; the original's gt_imgs)
  bg      what the head is composited over: torso.mp4 (head removed, neck inpainted, over the plate;
          the original's "bg_torso_color" in its w/o-portrait mode)
  head    1 where the parsing says face or hair (what the head model renders), else 0
  boxes   head box (ray sampling), face rect, lower-face rect (Face-Sync losses) and lip box (lip stage),
          all in pixels [x0, y0, x1, y1) of the (possibly downscaled) frame

Scene scale (world -> NeRF coordinates): pose.npz's world is the head frame with the outer eye corners
0.25 units apart (docs/subject-format.md). ``derive_scene`` back-projects every frame's head-mask box
onto the plane through the world origin facing that frame's camera, takes the extent of those points
as the head's size (depth assumed equal to the width, centred a little behind the rigid-point origin,
because the origin sits near the face surface), and picks ``p_nerf = scale * (p_world - offset)`` so the
largest half-extent lands at ``scene_fill`` (0.8) inside the [-1, 1]^3 box of the hash grid and the
occupancy grid. Rays keep their world directions; only origins and lengths are scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.log import get_logger, progress

log = get_logger("nerf.data")

AUDIO_FEATURES = "audio/features.npy"   # written by synctalk.audio.features.build_subject_audio
AUDIO_WINDOW = 8                         # frames [i-4, i+3], as the original's AudioAttNet input
NOSE_TIP = 1                             # mediapipe face-mesh ids
LIP_IDS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409)
# Head depth behind the rigid-point origin, as a fraction of the head half-width (the origin is the
# centroid of forehead / nose / eye-corner / cheekbone points, which lie near the front of the head).
DEPTH_CENTRE_SHIFT = 0.3


@dataclass
class SceneTransform:
    """p_nerf = scale * (p_world - offset)."""

    scale: float
    offset: tuple[float, float, float]
    head_half_extent: tuple[float, float, float]   # world units, before scaling

    def to_json(self) -> dict:
        return {"scale": self.scale, "offset": list(self.offset), "head_half_extent": list(self.head_half_extent)}

    @staticmethod
    def from_json(d: dict) -> "SceneTransform":
        return SceneTransform(float(d["scale"]), tuple(float(v) for v in d["offset"]),
                              tuple(float(v) for v in d["head_half_extent"]))


@dataclass
class TrainData:
    gt: torch.Tensor             # [N, H, W, 3] uint8
    bg: torch.Tensor             # [N, H, W, 3] uint8
    head: torch.Tensor           # [N, H, W] uint8 (0/1)
    c2w: torch.Tensor            # [N, 4, 4] float32, NeRF coordinates (scaled, offset)
    intrinsics: torch.Tensor     # [4] fx, fy, cx, cy of the (downscaled) frames
    expressions: torch.Tensor    # [N, 7] float32
    audio: torch.Tensor          # [N, 512] float32 (AVE features)
    head_box: torch.Tensor       # [N, 4] long x0, y0, x1, y1
    face_rect: torch.Tensor      # [N, 4] long
    lower_face: torch.Tensor     # [N, 4] long
    lip_box: torch.Tensor        # [N, 4] long (square)
    train_ids: torch.Tensor      # [T] long
    test_ids: torch.Tensor       # [V] long
    scene: SceneTransform
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.gt.shape[0])

    @property
    def height(self) -> int:
        return int(self.gt.shape[1])

    @property
    def width(self) -> int:
        return int(self.gt.shape[2])

    @property
    def device(self) -> torch.device:
        return self.gt.device

    def audio_window(self, frames: torch.Tensor) -> torch.Tensor:
        """AVE features of frames [i-4, i+3] (clamped at the ends): [B] -> [B, 8, 512]."""
        offsets = torch.arange(-(AUDIO_WINDOW // 2), AUDIO_WINDOW - AUDIO_WINDOW // 2, device=frames.device)
        ids = (frames[:, None] + offsets[None, :]).clamp(0, self.n_frames - 1)
        return self.audio[ids]

    def rays(self, frames: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
             correction: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """World(NeRF)-space rays through pixel centres: frames/xs/ys [R] -> origins [R,3], unit dirs [R,3].

        Pixel (x, y) is the point u = x, v = y of ``convention.project`` (integer pixel centres, as the
        tracked points the poses are fitted to), so a ray passes through the world points projected
        onto its pixel (tests/test_nerf_rays.py). The earlier x + 0.5 was PSNR-neutral in practice (the
        fit absorbs a constant half-pixel offset; BENCHMARKS-train-2.md) but disagreed with the poses.

        ``correction`` = per-ray (rotation [R, 3, 3], translation [R, 3]) applied in the camera frame,
        c2w' = c2w @ [R t] (``synctalk.nerf.pose_refine``); differentiable in both."""
        fx, fy, cx, cy = self.intrinsics
        cam = torch.stack([(xs.float() - cx) / fx, -(ys.float() - cy) / fy,
                           -torch.ones_like(xs, dtype=torch.float32)], dim=-1)
        pose = self.c2w[frames]
        origins = pose[:, :3, 3]
        if correction is not None:
            rot, trans = correction
            cam = torch.einsum("rij,rj->ri", rot, cam)
            origins = origins + torch.einsum("rij,rj->ri", pose[:, :3, :3], trans)
        dirs = torch.einsum("rij,rj->ri", pose[:, :3, :3], cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return origins.contiguous(), dirs


def _boxes_from_points(points: np.ndarray) -> np.ndarray:
    """[N, K, 2] pixel points -> [N, 4] float x0, y0, x1, y1."""
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)


def _clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    b = np.round(boxes).astype(np.int64)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 1)
    b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 1)
    return b


def landmark_boxes(lms: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Face rect, lower-face rect (nose tip down to the lowest point) and square lip box per frame."""
    xy = lms[..., :2].astype(np.float64)
    face = _boxes_from_points(xy)
    lower = face.copy()
    lower[:, 1] = xy[:, NOSE_TIP, 1]
    lips = _boxes_from_points(xy[:, list(LIP_IDS)])
    centre = (lips[:, :2] + lips[:, 2:]) / 2
    # As the original: a square of side max(w, h) around the lips, at least 32 px so a perceptual net
    # still sees structure (scaled with the frame size for downscaled CPU runs).
    half = np.maximum((lips[:, 2:] - lips[:, :2]).max(axis=1) / 2, 16.0 * height / 512)[:, None]
    lip_box = np.concatenate([centre - half, centre + half], axis=1)
    return {"face_rect": _clip_boxes(face, height, width), "lower_face": _clip_boxes(lower, height, width),
            "lip_box": _clip_boxes(lip_box, height, width)}


def mask_boxes(head: np.ndarray, margin: float) -> np.ndarray:
    """[N, H, W] masks -> [N, 4] float boxes grown by ``margin`` of their size; empty masks -> whole frame."""
    return boxes_from_profiles(head.any(axis=2), head.any(axis=1), margin)


def boxes_from_profiles(rows: np.ndarray, cols: np.ndarray, margin: float) -> np.ndarray:
    """``mask_boxes`` from the masks' row / column occupancy ([N, H] and [N, W] bool, i.e. ``any`` over
    the other axis), so a caller can reduce the masks where they live (e.g. on the GPU) first."""
    rows, cols = np.asarray(rows, dtype=bool), np.asarray(cols, dtype=bool)
    n, h = rows.shape
    w = cols.shape[1]
    r0, r1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)   # first row, last row + 1
    c0, c1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    bw, bh = (c1 - c0).astype(np.float64), (r1 - r0).astype(np.float64)
    boxes = np.stack([c0 - margin * bw, r0 - margin * bh, c1 + margin * bw, r1 + margin * bh], axis=1)
    empty = ~(rows.any(axis=1) & cols.any(axis=1))
    boxes[empty] = [0.0, 0.0, w, h]
    return boxes


def derive_scene(c2w: np.ndarray, intrinsics: np.ndarray, head_boxes: np.ndarray, fill: float) -> SceneTransform:
    """Scene transform from head-mask boxes back-projected at the world origin's depth (module docstring)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    rot, centre = c2w[:, :3, :3].astype(np.float64), c2w[:, :3, 3].astype(np.float64)
    # Depth of the world origin in each camera (camera looks down -z).
    depth = -np.einsum("nji,nj->ni", rot, -centre)[:, 2]
    if not np.all(depth > 0):
        raise InputError("pose.npz puts the head behind the camera in some frames; re-run `synctalk prepare --force`")
    corners = []
    for xs, ys in ((0, 1), (2, 1), (0, 3), (2, 3)):
        u, v = head_boxes[:, xs], head_boxes[:, ys]
        cam = np.stack([(u - cx) / fx * depth, -(v - cy) / fy * depth, -depth], axis=1)
        corners.append(np.einsum("nij,nj->ni", rot, cam) + centre)
    pts = np.concatenate(corners)
    lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    half_x, half_y = (hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2
    half_z = half_x
    offset = ((hi[0] + lo[0]) / 2, (hi[1] + lo[1]) / 2, -DEPTH_CENTRE_SHIFT * half_x)
    scale = fill / max(half_x, half_y, half_z)
    return SceneTransform(float(scale), tuple(float(v) for v in offset), (float(half_x), float(half_y), float(half_z)))


def _read_video(path: Path, count: int, size: tuple[int, int] | None, desc: str) -> np.ndarray:
    import cv2

    from synctalk.io.video import iter_frames

    frames = []
    for frame in progress(iter_frames(path, 0, count), desc=desc, total=count, unit="frame"):
        if size is not None:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    if len(frames) != count:
        raise InputError(f"{path} has {len(frames)} frames, the subject says {count}; re-run `synctalk prepare`")
    return np.stack(frames)


def load_audio_features(sub: S.Subject, n_frames: int) -> np.ndarray:
    path = sub.path(AUDIO_FEATURES)
    if not path.is_file():
        raise InputError(f"{path} is missing; run `synctalk train {sub.root} --stage audio` first")
    feats = np.load(path, allow_pickle=False)
    if feats.ndim != 2 or feats.shape[0] < n_frames:
        raise InputError(f"{path} has shape {feats.shape}, expected [{n_frames}, 512]; re-run --stage audio")
    return np.ascontiguousarray(feats[:n_frames], dtype=np.float32)


def load_subject(root: str | Path, device: torch.device | str, downscale: int = 1, max_frames: int | None = None,
                 head_box_margin: float = 0.15, scene_fill: float = 0.8,
                 scene: SceneTransform | None = None, gt_halo_px: int = 0) -> TrainData:
    """Read a prepared subject into device memory (see the module docstring). ``scene`` reuses a saved
    transform (resume / rendering) instead of deriving it again; ``gt_halo_px`` is ``composite_gt``'s."""
    import cv2

    from synctalk.prepare.background import composite_gt, load_plate
    from synctalk.prepare.maskcodec import MaskReader

    sub = S.Subject(root)
    n = sub.n_frames if max_frames is None else min(sub.n_frames, max_frames)
    full_h, full_w = sub.size
    if downscale < 1 or full_h % downscale or full_w % downscale:
        raise InputError(f"downscale {downscale} does not divide the frame size {full_w}x{full_h}")
    h, w = full_h // downscale, full_w // downscale
    size = (h, w) if downscale > 1 else None

    with MaskReader(sub.path(S.PARSING)) as reader:
        labels = np.stack([reader[i] for i in range(n)])
    plate = load_plate(sub.path(S.BACKGROUND))
    frames = _read_video(sub.path(S.FRAMES), n, None, "load frames")
    gt = np.empty((n, h, w, 3), np.uint8)
    head = np.empty((n, h, w), np.uint8)
    for i in range(n):
        target = composite_gt(frames[i], labels[i], plate, gt_halo_px)
        is_head = S.head_mask(labels[i]).astype(np.uint8)
        if size is not None:
            target = cv2.resize(target, (w, h), interpolation=cv2.INTER_AREA)
            is_head = cv2.resize(is_head, (w, h), interpolation=cv2.INTER_NEAREST)
        gt[i], head[i] = target, is_head
    del frames, labels
    bg = _read_video(sub.path(S.TORSO), n, size, "load torso")

    pose = sub.pose()
    c2w = pose["c2w"][:n].astype(np.float64)
    intr = pose["intrinsics"].astype(np.float64).reshape(4) / downscale
    head_boxes = mask_boxes(head.astype(bool), 0.0)
    if scene is None:
        scene = derive_scene(c2w, intr, head_boxes, scene_fill)
    log.info("scene: head half-extent %s world units -> scale %.3f, offset %s",
             np.round(scene.head_half_extent, 3).tolist(), scene.scale, np.round(scene.offset, 3).tolist())
    nerf_c2w = c2w.copy()
    nerf_c2w[:, :3, 3] = scene.scale * (c2w[:, :3, 3] - np.asarray(scene.offset))

    lms = sub.landmarks()[:n] / downscale
    boxes = landmark_boxes(lms, h, w)
    exp = sub.expressions()[:n].astype(np.float32)
    audio = load_audio_features(sub, n)
    split = sub.split
    n_train = min(split.n_train, n)
    train_ids = np.arange(0, n_train)
    test_ids = np.arange(n_train, n) if n_train < n else np.arange(max(0, n - 2), n)

    dev = torch.device(device)

    def t(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(a))
        return out.to(device=dev, dtype=dtype) if dtype is not None else out.to(dev)

    data = TrainData(
        gt=t(gt), bg=t(bg), head=t(head), c2w=t(nerf_c2w, torch.float32), intrinsics=t(intr, torch.float32),
        expressions=t(exp), audio=t(audio),
        head_box=t(_clip_boxes(mask_boxes(head.astype(bool), head_box_margin), h, w)),
        face_rect=t(boxes["face_rect"]), lower_face=t(boxes["lower_face"]), lip_box=t(boxes["lip_box"]),
        train_ids=t(train_ids), test_ids=t(test_ids), scene=scene,
        meta={"subject": str(Path(root).resolve()), "frames": n, "height": h, "width": w, "downscale": downscale})
    gib = sum(x.numel() * x.element_size() for x in (data.gt, data.bg, data.head)) / 2**30
    log.info("training data: %d frames %dx%d on %s (%.2f GiB of images)", n, w, h, dev, gib)
    return data
