"""The pose stage on the real 71-s anchor clip (1779 frames): accuracy and stabilisation.

Until the lead's `prepared_anchor` fixture (full `synctalk prepare`) replaces it, the subject files
the pose stage reads (frames.mp4, landmarks.npz, parsing.npz) are built here: mediapipe face mesh in
tracking mode for the landmarks, and the mesh's face-oval polygon as the FACE label.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from synctalk import subject as S


def build_pose_inputs(video: Path, root: Path) -> dict:
    """Write frames.mp4 (a link to ``video``), landmarks.npz and parsing.npz into ``root``.

    Returns the facts the decode stage would publish. The video must already be 25 fps."""
    import cv2
    import mediapipe as mp

    from synctalk.io.atomic import save_npz
    from synctalk.io.video import iter_frames
    from synctalk.prepare.maskcodec import MaskWriter

    root.mkdir(parents=True, exist_ok=True)
    frames_path = root / S.FRAMES
    if not frames_path.exists():
        os.symlink(video, frames_path)
    oval_edges = mp.solutions.face_mesh.FACEMESH_FACE_OVAL
    oval = _edges_to_polygon(oval_edges)
    lms_all: list[np.ndarray] = []
    detected: list[bool] = []
    writer = None
    h = w = 0
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for rgb in iter_frames(video):
            h, w = rgb.shape[:2]
            if writer is None:
                writer = MaskWriter(root / S.PARSING, h, w)
            result = mesh.process(rgb)
            labels = np.zeros((h, w), np.uint8)
            if result.multi_face_landmarks:
                pts = np.array([(p.x * w, p.y * h, p.z * w) for p in result.multi_face_landmarks[0].landmark],
                               np.float32)
                cv2.fillPoly(labels, [np.round(pts[oval, :2]).astype(np.int32)], S.LABEL_FACE)
                lms_all.append(pts)
                detected.append(True)
            else:
                lms_all.append(np.zeros((478, 3), np.float32))
                detected.append(False)
            writer.add(labels)
    assert writer is not None
    writer.close()
    save_npz(root / S.LANDMARKS, lms=np.stack(lms_all), detected=np.array(detected))
    return {"n_frames": len(lms_all), "width": w, "height": h, "fps": 25.0}


def _edges_to_polygon(edges: frozenset) -> list[int]:
    """Order mediapipe's unordered face-oval edge set into a closed polygon of vertex ids."""
    nxt = dict(edges)
    start = next(iter(nxt))
    poly = [start]
    while nxt[poly[-1]] != start:
        poly.append(nxt[poly[-1]])
    return poly


@pytest.fixture(scope="module")
def anchor_pose_inputs(anchor_video: Path, tmp_path_factory) -> tuple[Path, dict]:
    cache = os.environ.get("SYNCTALK_TEST_POSE_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("pose_subject")
    facts_ok = (root / S.LANDMARKS).is_file() and (root / S.PARSING).is_file()
    if facts_ok:
        n = int(np.load(root / S.LANDMARKS)["lms"].shape[0])
        facts = {"n_frames": n, "width": 512, "height": 512, "fps": 25.0}
    else:
        facts = build_pose_inputs(anchor_video, root)
    return root, facts


@pytest.mark.slow
def test_pose_stage_on_real_clip(anchor_pose_inputs, tmp_path):
    from synctalk.prepare.config import PrepareConfig
    from synctalk.prepare.context import StageContext
    from synctalk.prepare.headpose.convention import project
    from synctalk.prepare.pose import run

    root, facts = anchor_pose_inputs
    ctx = StageContext(root=root, source=root / S.FRAMES, config=PrepareConfig(), facts=dict(facts))
    out = run(ctx)
    pose = np.load(root / S.POSE, allow_pickle=False)
    n = facts["n_frames"]
    assert pose["c2w"].shape == (n, 4, 4) and pose["c2w"].dtype == np.float32
    assert pose["c2w_raw"].shape == (n, 4, 4)
    k = pose["points3d"].shape[0]
    assert 30 <= k <= 200 and pose["track_xy"].shape == (n, k, 2) and pose["track_vis"].shape == (n, k)
    # the published reprojection error is reproducible through the reference projection
    uv = project(pose["points3d"], pose["c2w"], pose["intrinsics"])
    err = np.linalg.norm(uv - pose["track_xy"], axis=-1)[pose["track_vis"]]
    assert np.median(err) <= 1.5
    assert abs(np.median(err) - out["pose"]["reprojection_px_median_after"]) < 0.01
    assert out["pose"]["jitter_after"] < out["pose"]["jitter_before"]
    assert 300 < out["camera"]["focal"] < 3000 and out["camera"]["convention"] == "opengl_c2w_head_world"
    # the rest shape explains the mesh's rigid landmarks (step 1), and every keypoint is in front of
    # every stabilised camera
    assert out["pose"]["landmark_reprojection_px_median"] < 1.5
    assert np.isfinite(uv).all()
