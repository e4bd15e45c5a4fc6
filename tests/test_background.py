"""Tests of the `background` stage: clean plate, torso images, torso alpha, moving-background check.

Real-footage checks use rough parsing labels built here from mediapipe (selfie person mask + face-mesh
oval), so they do not depend on the parsing stage; synthetic scenes check exact recovery.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from synctalk import subject as S

# Face-oval landmark ids of the mediapipe mesh (the FACEMESH_FACE_OVAL contour), used as a convex hull.
_FACE_OVAL = (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234,
              251, 284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
_EYE_CORNERS = (33, 133, 362, 263)
_CHIN = 152


def rough_labels(frames: list[np.ndarray]) -> np.ndarray:
    """Approximate parsing labels [N,H,W] uint8 from mediapipe: face = mesh oval hull; above the chin,
    person-not-face = hair; below it, a band under the face's middle = neck; rest of the person = torso."""
    import mediapipe as mp

    n, h, w = len(frames), frames[0].shape[0], frames[0].shape[1]
    out = np.zeros((n, h, w), np.uint8)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg, \
            mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as mesh:
        for t, rgb in enumerate(frames):
            person = seg.process(rgb).segmentation_mask > 0.5
            res = mesh.process(rgb)
            labels = np.where(person, S.LABEL_TORSO, S.LABEL_BACKGROUND).astype(np.uint8)
            if res.multi_face_landmarks:
                lm = res.multi_face_landmarks[0].landmark
                pts = np.array([[lm[i].x * w, lm[i].y * h] for i in _FACE_OVAL], np.float32)
                face = np.zeros((h, w), np.uint8)
                cv2.fillConvexPoly(face, cv2.convexHull(pts).astype(np.int32), 1)
                chin_y = lm[_CHIN].y * h
                face_h = chin_y - min(lm[i].y for i in _FACE_OVAL) * h
                x0, x1 = pts[:, 0].min(), pts[:, 0].max()
                mid, half = (x0 + x1) / 2, 0.3 * (x1 - x0)
                above = rows <= chin_y
                labels[person & above] = S.LABEL_HAIR
                neck = person & ~above & (rows < chin_y + 0.3 * face_h) & (np.abs(cols - mid) < half)
                labels[neck] = S.LABEL_NECK
                labels[face.astype(bool)] = S.LABEL_FACE
            out[t] = labels
    return out


# ----------------------------------------------------------------------------------------------------
# Synthetic scenes
# ----------------------------------------------------------------------------------------------------

def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth but clearly textured RGB background (so motion is visible, and H.264 keeps it well)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 225, size=(h // 8, w // 8, 3)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (5, 5), 0)


def _disc_scene(n: int, h: int = 96, w: int = 128, drift_px: int = 0):
    """A disc labelled torso moving left to right over a background that optionally drifts sideways."""
    base = _texture(h, w + n * drift_px + 1)
    frames, labels = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(n):
        off = t * drift_px
        frame = np.ascontiguousarray(base[:, off:off + w])
        cx = 20 + (w - 40) * t / max(n - 1, 1)
        disc = (yy - h / 2) ** 2 + (xx - cx) ** 2 < 15 ** 2
        frame = frame.copy()
        frame[disc] = (200, 60, 40)
        lab = np.where(disc, S.LABEL_TORSO, S.LABEL_BACKGROUND).astype(np.uint8)
        frames.append(frame)
        labels.append(lab)
    return base[:, :w], frames, labels


def test_plate_recovers_known_background_behind_moving_disc():
    from synctalk.prepare.background import PlateBuilder

    truth, frames, labels = _disc_scene(12)
    builder = PlateBuilder(*truth.shape[:2], min_distance_px=5.0)
    for f, lab in zip(frames, labels):
        builder.add(f, lab)
    plate, unseen, motion = builder.finish()
    assert unseen.mean() == 0.0  # the disc moved far enough to uncover every pixel
    assert np.array_equal(plate, truth)  # no disc colour left anywhere
    assert motion < 0.5


def test_plate_inpaints_pixels_never_seen():
    from synctalk.prepare.background import PlateBuilder

    truth = np.full((64, 64, 3), (20, 120, 220), np.uint8)
    lab = np.zeros((64, 64), np.uint8)
    lab[20:40, 20:40] = S.LABEL_TORSO  # never moves
    frame = truth.copy()
    frame[20:40, 20:40] = 255
    builder = PlateBuilder(64, 64)
    for _ in range(3):
        builder.add(frame, lab)
    plate, unseen, _ = builder.finish()
    assert unseen[20:40, 20:40].all()
    assert not unseen[:14].any() and not unseen[46:].any()  # only the person + its 5-px margin
    error = np.abs(plate.astype(int) - truth)
    assert error.max() <= 6 and error.mean() < 1  # filled from the flat surroundings, no person white


def _head_scene(h: int = 160, w: int = 160):
    """Background, a round face with hair on top, a neck under the chin and a torso: labels + frame."""
    plate = _texture(h, w, seed=3)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.uint8)
    labels[110:, 20:140] = S.LABEL_TORSO
    labels[85:110, 65:95] = S.LABEL_NECK
    face = (yy - 60) ** 2 + (xx - 80) ** 2 < 30 ** 2
    labels[face & (yy < 42)] = S.LABEL_HAIR
    labels[face & (yy >= 42)] = S.LABEL_FACE
    labels[84:86, 60:100][face[84:86, 60:100]] = S.LABEL_FACE  # the chin overlaps the neck top
    frame = plate.copy()
    frame[labels == S.LABEL_FACE] = (230, 180, 150)
    frame[labels == S.LABEL_HAIR] = (40, 30, 20)
    neck_shade = np.linspace(150, 190, 25).astype(np.uint8)  # darker under the jaw, like a real neck
    frame[85:110, 65:95] = np.stack([neck_shade, neck_shade - 40, neck_shade - 60], -1)[:, None, :]
    frame[110:, 20:140] = (30, 40, 90)
    return frame, labels, plate


def test_torso_image_removes_head_and_inpaints_neck_upward():
    from synctalk.prepare.background import BackgroundConfig, torso_image

    frame, labels, plate = _head_scene()
    cfg = BackgroundConfig()
    rgb, alpha = torso_image(frame, labels, plate, cfg)
    assert rgb.shape == frame.shape and rgb.dtype == np.uint8
    assert set(np.unique(alpha)) <= {0, 255}

    head = (labels == S.LABEL_FACE) | (labels == S.LABEL_HAIR)
    body = (labels == S.LABEL_NECK) | (labels == S.LABEL_TORSO)
    inpainted = (alpha > 0) & ~body
    assert (alpha[body] == 255).all()                     # alpha covers neck + torso
    assert np.array_equal(rgb[alpha == 0], plate[alpha == 0])  # all the rest is the plate ...
    assert inpainted.any() and (head | (labels == S.LABEL_NECK))[inpainted].all()  # ... only head painted
    # no head colour survives anywhere
    for colour in ((230, 180, 150), (40, 30, 20)):
        assert not (np.abs(rgb.astype(int) - colour).sum(-1) < 10).any()

    # The inpainted region sits directly above the neck: same columns, contiguous with its top.
    cols = np.nonzero(inpainted.any(axis=0))[0]
    assert cols.min() >= 65 and cols.max() <= 94
    neck_top = int(np.nonzero(labels[:, 80] == S.LABEL_NECK)[0][0])
    ys = np.nonzero(inpainted[:, 80])[0]
    assert ys.max() == neck_top - 1 and np.array_equal(ys, np.arange(ys.min(), ys.max() + 1))
    assert cfg.neck_inpaint_px - 4 <= neck_top - ys.min() <= cfg.neck_inpaint_px  # extends ~53 px up
    # Its colour continues the neck: near the neck it is the neck's top colour, far up its mean colour.
    top_colour = frame[neck_top:neck_top + 3, 70:90].reshape(-1, 3).astype(float).mean(0)
    neck_mean = frame[labels == S.LABEL_NECK].astype(float).mean(0)
    just_above = rgb[neck_top - 4:neck_top, 70:90].reshape(-1, 3).astype(float).mean(0)
    far_above = rgb[ys.min() + 3:ys.min() + 8, 70:90].reshape(-1, 3).astype(float).mean(0)
    assert np.linalg.norm(just_above - top_colour) < 8
    assert np.linalg.norm(far_above - neck_mean) < 8


def test_composite_gt_replaces_only_background():
    from synctalk.prepare.background import composite_gt

    frame, labels, plate = _head_scene()
    noisy = frame.copy()
    noisy[labels == S.LABEL_BACKGROUND] = 0
    gt = composite_gt(noisy, labels, plate)
    bg = labels == S.LABEL_BACKGROUND
    assert np.array_equal(gt[bg], plate[bg]) and np.array_equal(gt[~bg], frame[~bg])


def test_composite_gt_halo_keeps_the_frame_just_around_the_head():
    import cv2

    from synctalk.prepare.background import composite_gt

    frame, labels, plate = _head_scene()
    noisy = frame.copy()
    noisy[labels == S.LABEL_BACKGROUND] = 7          # the frame's own background colour
    gt = composite_gt(noisy, labels, plate, halo_px=3)
    bg = labels == S.LABEL_BACKGROUND
    head = ((labels == S.LABEL_FACE) | (labels == S.LABEL_HAIR)).astype(np.uint8)
    dist = cv2.distanceTransform(1 - head, cv2.DIST_L2, 5)
    near, far = bg & (dist <= 2.5), bg & (dist >= 4.5)
    assert near.sum() > 0 and far.sum() > 0
    assert np.all(gt[near] == 7)                     # within the halo: the frame
    assert np.array_equal(gt[far], plate[far])       # beyond it: the plate
    assert np.array_equal(gt[~bg], frame[~bg])       # the person is untouched
    assert np.array_equal(composite_gt(noisy, labels, plate, halo_px=0), composite_gt(noisy, labels, plate))


def test_prefetched_reraises_worker_failure_and_stops_early():
    from synctalk.prepare.background import _prefetched

    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(_prefetched(failing()))
    taken = []
    for item in _prefetched(iter(range(1000)), depth=2):
        taken.append(item)
        if item == 3:
            break
    assert taken == [0, 1, 2, 3]


def _make_subject(root: Path, frames: list[np.ndarray], labels: list[np.ndarray]):
    """A minimal subject directory (frames.mp4 + parsing.npz) and the stage context to run on it."""
    import dataclasses

    from synctalk.io.video import VideoWriter
    from synctalk.prepare.config import PrepareConfig
    from synctalk.prepare.context import StageContext
    from synctalk.prepare.maskcodec import MaskWriter

    h, w = labels[0].shape
    with VideoWriter(root / S.FRAMES, fps=25.0, crf=16, preset="veryfast") as video:
        for f in frames:
            video.write(f)
    writer = MaskWriter(root / S.PARSING, h, w)
    for lab in labels:
        writer.add(lab)
    writer.close()
    cfg = PrepareConfig()
    cfg = dataclasses.replace(cfg, background=dataclasses.replace(cfg.background, sample_every=2))
    facts = {"n_frames": len(frames), "height": h, "width": w, "fps": 25.0}
    return StageContext(root=root, source=root / S.FRAMES, config=cfg, facts=facts)


def _run_capturing_warnings(ctx, caplog) -> tuple[dict, list[str]]:
    from synctalk.prepare import background

    # Attach to the stage's logger itself: the CLI's setup_logging stops propagation to the root logger.
    background.log.addHandler(caplog.handler)
    try:
        caplog.clear()
        facts = background.run(ctx)
    finally:
        background.log.removeHandler(caplog.handler)
    return facts, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("drift_px, moving", [(0, False), (2, True)])
def test_stage_outputs_and_moving_background_warning(tmp_path, caplog, drift_px, moving):
    from synctalk.io.video import iter_frames
    from synctalk.prepare.background import load_plate
    from synctalk.prepare.maskcodec import MaskReader

    truth, frames, labels = _disc_scene(20, drift_px=drift_px)
    ctx = _make_subject(tmp_path, frames, labels)
    facts, warnings = _run_capturing_warnings(ctx, caplog)

    info = facts["background"]
    assert info["moving"] is moving
    assert any("background moves" in m for m in warnings) is moving
    assert (info["motion_stat"] > ctx.config.background.motion_threshold) is moving
    assert 0.0 <= info["unseen_fraction"] < 0.05
    plate = load_plate(tmp_path / S.BACKGROUND)
    assert plate.shape == truth.shape
    if not moving:  # the plate matches every decoded frame where that frame shows background
        for t, decoded in enumerate(iter_frames(tmp_path / S.FRAMES)):
            background = cv2.erode((labels[t] == 0).view(np.uint8), np.ones((5, 5), np.uint8)) > 0
            assert np.abs(plate.astype(int) - decoded)[background].mean() < 1.5
    torso = list(iter_frames(tmp_path / S.TORSO))
    with MaskReader(tmp_path / S.TORSO_ALPHA) as alpha:
        assert len(torso) == len(alpha) == len(frames)
        for t in (0, 10, 19):
            assert np.array_equal(alpha[t] > 0, labels[t] == S.LABEL_TORSO)  # no head: alpha = the disc
    assert (tmp_path / S.TORSO).stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes left no temporaries


def test_stage_rejects_parsing_of_the_wrong_length(tmp_path):
    from synctalk.errors import StageError
    from synctalk.prepare import background

    _, frames, labels = _disc_scene(6)
    ctx = _make_subject(tmp_path, frames, labels)
    ctx.facts["n_frames"] = 7
    with pytest.raises(StageError, match="re-run the parsing stage"):
        background.run(ctx)


# ----------------------------------------------------------------------------------------------------
# Real footage: the first 120 frames of the anchor clip with rough mediapipe labels
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anchor_clip(anchor_video: Path):
    from synctalk.io.video import iter_frames

    frames = list(iter_frames(anchor_video, stop=120))
    return frames, rough_labels(frames)


@pytest.fixture(scope="module")
def anchor_plate(anchor_clip):
    from synctalk.prepare.background import PlateBuilder

    frames, labels = anchor_clip
    builder = PlateBuilder(*labels.shape[1:])
    for t in range(0, len(frames), 5):
        builder.add(frames[t], labels[t])
    return builder.finish()


def test_real_plate_matches_background_of_every_frame(anchor_clip, anchor_plate):
    frames, labels = anchor_clip
    plate, unseen, motion = anchor_plate
    assert motion < 6.0  # static studio background
    assert 0.05 < unseen.mean() < 0.6  # the lower body never leaves; most of the wall is seen
    for t in (0, 33, 77, 119):  # sampled and unsampled frames
        far = cv2.distanceTransform((labels[t] == 0).view(np.uint8), cv2.DIST_L2, 5) > 5
        error = np.abs(plate.astype(int) - frames[t])[far & ~unseen]
        assert error.mean() < 3.0, (t, error.mean())


def test_real_torso_images_have_no_head_and_a_continuous_neck(anchor_clip, anchor_plate):
    from synctalk.prepare.background import torso_image

    frames, labels = anchor_clip
    plate = anchor_plate[0]
    checked = 0
    for t in (0, 40, 80, 119):
        lab = labels[t]
        rgb, alpha = torso_image(frames[t], lab, plate)
        head = (lab == S.LABEL_FACE) | (lab == S.LABEL_HAIR)
        neck = lab == S.LABEL_NECK
        body = neck | (lab == S.LABEL_TORSO)
        assert (alpha[body] == 255).all()
        shown = alpha > 0
        assert np.array_equal(rgb[~shown], plate[~shown])  # head (and background) show the plate ...
        inpainted = shown & ~body
        assert head[inpainted].all()  # ... except the inpainted neck/torso tops, inside the old head
        # Neck columns whose top touches the head: the inpainted band right above the neck continues the
        # neck's colour and reaches well up into the removed head.
        neck_cols = np.nonzero(neck.any(axis=0))[0]
        tops = neck.argmax(axis=0)
        cols = [x for x in neck_cols[5:-5] if head[tops[x] - 1, x]]
        if not cols:
            continue
        below = np.array([frames[t][tops[x] + 1:tops[x] + 4, x] for x in cols], float).reshape(-1, 3)
        above = np.array([rgb[tops[x] - 4:tops[x], x] for x in cols], float).reshape(-1, 3)
        assert np.linalg.norm(above.mean(0) - below.mean(0)) < 25
        assert all(inpainted[tops[x] - 30:tops[x], x].all() for x in cols)
        checked += 1
    assert checked >= 3


def test_torso_image_edge_cases_empty_frame_and_wide_label_dtype():
    from synctalk.prepare.background import torso_image

    frame, labels, plate = _head_scene()
    rgb, alpha = torso_image(frame, np.zeros_like(labels), plate)  # nobody in the frame
    assert np.array_equal(rgb, plate) and not alpha.any()
    rgb8, alpha8 = torso_image(frame, labels, plate)
    rgb64, alpha64 = torso_image(frame, labels.astype(np.int64), plate)
    assert np.array_equal(rgb8, rgb64) and np.array_equal(alpha8, alpha64)
