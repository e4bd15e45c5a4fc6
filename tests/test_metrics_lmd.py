"""Mouth LMD with dlib 68-point landmarks on real frames of the anchor clip."""

from __future__ import annotations

import numpy as np
import pytest

from synctalk.errors import MissingWeightsError
from synctalk.io.video import iter_frames
from synctalk.metrics.lmd import Landmarks68, evaluate_lmd, mouth_distance


@pytest.fixture(scope="module")
def frames(anchor_video) -> list[np.ndarray]:
    decoded = list(iter_frames(anchor_video, 0, 21))
    return [decoded[0], decoded[20]]  # frame 20: mouth nearly closed, frame 0: open


@pytest.fixture(scope="module")
def landmarker() -> Landmarks68:
    return Landmarks68()


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(image)
    out[dy:, dx:] = image[: image.shape[0] - dy, : image.shape[1] - dx]
    return out


def test_mouth_distance_formula():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 10, (68, 2))
    assert mouth_distance(gt, gt) == 0.0
    assert mouth_distance(gt + [7.0, -3.0], gt) == pytest.approx(0.0, abs=1e-12)  # translation removed
    moved = gt.copy()
    moved[48:68, 0] += np.where(np.arange(20) < 10, 2.0, -2.0)  # zero-mean change of 2 px per point
    assert mouth_distance(moved, gt) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        mouth_distance(gt[:30], gt[:30])


def test_landmarks_land_on_the_face(frames, landmarker):
    """dlib's points agree with mediapipe's face mesh (an independent model) at matching features."""
    import mediapipe as mp

    frame = frames[0]
    lms = landmarker.landmarks(frame)
    assert lms is not None and lms.shape == (68, 2)
    h, w = frame.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        found = mesh.process(frame).multi_face_landmarks
    assert found, "mediapipe found no face in the reference frame"
    mesh_xy = np.array([(p.x * w, p.y * h) for p in found[0].landmark])
    pairs = {36: 33, 45: 263, 48: 61, 54: 291}  # outer eye corners, mouth corners
    for dlib_idx, mesh_idx in pairs.items():
        assert np.linalg.norm(lms[dlib_idx] - mesh_xy[mesh_idx]) < 8.0, (dlib_idx, lms[dlib_idx], mesh_xy[mesh_idx])
    mouth_centre = lms[[62, 66]].mean(axis=0)
    assert np.linalg.norm(mouth_centre - mesh_xy[[13, 14]].mean(axis=0)) < 6.0


def test_lmd_self_zero_shift_zero_and_different_mouth_positive(frames, landmarker):
    frame, later = frames
    box = landmarker.detect(frame)
    assert box is not None
    base = landmarker.landmarks(frame, box=box)
    assert mouth_distance(base, landmarker.landmarks(frame)) == 0.0

    # Shift image and box together: every point moves by exactly 5 px, mean-centring cancels it.
    shifted_box = tuple(v + 5 for v in box)
    shifted = landmarker.landmarks(_shift(frame, 5, 5), box=shifted_box)
    np.testing.assert_allclose(shifted - base, 5.0)
    assert mouth_distance(shifted, base) == pytest.approx(0.0, abs=1e-9)

    result = evaluate_lmd([frame, later], [frame, frame], landmarker)
    assert result.missing == 0
    assert result.per_frame[0] == 0.0
    assert result.per_frame[1] > 1.5  # frame 20 has a visibly different mouth opening
    assert result.lmd == pytest.approx(result.per_frame.mean())
    assert result.pred_faces == 2


def test_faceless_render_is_scored_in_the_shared_box_but_not_counted_as_a_face(frames, landmarker):
    # The blind spot pred_faces exists for: a render with no face still gets mouth points fitted in
    # the ground truth's box, hence a finite LMD; only the detector count reveals it.
    blank = np.full_like(frames[0], 128)
    result = evaluate_lmd([blank, frames[0]], [frames[0], frames[0]], landmarker)
    assert result.missing == 0 and np.isfinite(result.per_frame[0])
    assert result.pred_faces == 1


def test_lmd_faceless_frame_is_counted_missing(frames, landmarker):
    blank = np.full_like(frames[0], 128)
    result = evaluate_lmd([blank], [blank], landmarker)
    assert result.missing == 1 and np.isnan(result.lmd)
    assert landmarker.landmarks(blank) is None
    # a fallback box still yields points (e.g. a box from the subject's mediapipe landmarks)
    assert landmarker.landmarks(blank, fallback_box=(100, 100, 300, 300)).shape == (68, 2)


def test_missing_predictor_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingWeightsError, match="shape_predictor_68"):
        Landmarks68(tmp_path / "nope.dat")
