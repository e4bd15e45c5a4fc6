"""The landmarks stage on short real clips: shape, stability, gaps, several faces."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from media_factory import write_clip

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.io.video import iter_frames
from synctalk.prepare import landmarks as L
from synctalk.prepare import mesh_topology as M
from synctalk.prepare.config import PrepareConfig
from synctalk.prepare.context import StageContext
from synctalk.prepare.maskcodec import MaskReader

N_CLIP = 100


def run_landmarks(root: Path, frames: list[np.ndarray], cfg: PrepareConfig | None = None) -> tuple[dict, dict]:
    root.mkdir(parents=True, exist_ok=True)
    write_clip(root / S.FRAMES, frames)
    h, w = frames[0].shape[:2]
    ctx = StageContext(root=root, source=root / S.FRAMES, config=cfg or PrepareConfig(),
                       facts={"n_frames": len(frames), "width": w, "height": h, "fps": 25.0})
    facts = L.run(ctx)
    lms, detected = S.load_landmarks(root / S.LANDMARKS)
    return facts, {"lms": lms, "detected": detected}


@pytest.fixture(scope="module")
def clip(anchor_video: Path) -> list[np.ndarray]:
    return [f.copy() for f in iter_frames(anchor_video, 0, N_CLIP)]


@pytest.fixture(scope="module")
def clean_run(clip, tmp_path_factory) -> tuple[dict, dict, Path]:
    root = tmp_path_factory.mktemp("lms_clean")
    facts, arrays = run_landmarks(root, clip)
    return facts, arrays, root


def test_topology_matches_mediapipe_connections():
    from mediapipe.python.solutions import face_mesh_connections as C

    def ring_edges(loop):
        return {frozenset((a, b)) for a, b in zip(loop, loop[1:] + loop[:1])}

    def edges(conn):
        return {frozenset(e) for e in conn}

    assert ring_edges(M.FACE_OVAL) == edges(C.FACEMESH_FACE_OVAL)
    assert ring_edges(M.LIPS_OUTER) | ring_edges(M.LIPS_INNER) == edges(C.FACEMESH_LIPS)
    assert ring_edges(M.EYE_LEFT) == edges(C.FACEMESH_LEFT_EYE)
    assert ring_edges(M.EYE_RIGHT) == edges(C.FACEMESH_RIGHT_EYE)
    assert ring_edges(M.IRIS_LEFT) == edges(C.FACEMESH_LEFT_IRIS)
    assert ring_edges(M.IRIS_RIGHT) == edges(C.FACEMESH_RIGHT_IRIS)
    brow_l = {frozenset(e) for e in zip(M.BROW_LEFT_UPPER, M.BROW_LEFT_UPPER[1:])}
    brow_l |= {frozenset(e) for e in zip(M.BROW_LEFT_LOWER, M.BROW_LEFT_LOWER[1:])}
    assert brow_l == edges(C.FACEMESH_LEFT_EYEBROW)
    assert set(M.JAW_LINE) <= set(M.FACE_OVAL) and set(M.EAR_LEFT) <= set(M.EYE_LEFT)
    assert set(M.EAR_RIGHT) <= set(M.EYE_RIGHT)
    assert ring_edges(M.NOSE_LOWER) <= edges(C.FACEMESH_NOSE)


def test_clean_clip_landmarks(clean_run, clip):
    facts, arrays, root = clean_run
    lms, detected = arrays["lms"], arrays["detected"]
    assert lms.shape == (N_CLIP, 478, 3) and lms.dtype == np.float32
    assert detected.dtype == bool and detected.all()
    found = dict(facts["landmarks"])
    assert found.pop("av_offset") == {"unavailable": "no audio.wav"}   # this stage-only run has no audio
    assert found == {"detected": N_CLIP, "interpolated_frames": [], "multi_face_frames": 0}
    assert (lms[..., :2] > 0).all() and (lms[..., :2] < 512).all()
    # the subject's left eye (mediapipe LEFT) is on the image's right in this unmirrored clip
    assert (lms[:, M.EYE_CORNERS_LEFT[1], 0] > lms[:, M.EYE_CORNERS_RIGHT[1], 0]).all()
    # stable: rigid points move little between consecutive frames of a talking (not turning) head
    step = np.linalg.norm(np.diff(lms[:, list(M.RIGID), :2], axis=0), axis=-1)
    assert np.median(step) < 1.5 and step.max() < 15
    # z is in pixels too: the nose tip is in front of (smaller z than) the cheeks, by tens of px
    depth = lms[:, [M.CHEEK_LEFT, M.CHEEK_RIGHT], 2].mean(axis=1) - lms[:, M.NOSE_TIP, 2]
    assert 20 < np.median(depth) < 200
    with MaskReader(root / S.SEGMENTATION) as seg:
        assert seg.shape == (N_CLIP, 512, 512)
        person = seg[10]
    assert set(np.unique(person)) <= {0, 255}
    nose = lms[10, M.NOSE_TIP, :2].astype(int)
    assert person[nose[1], nose[0]] == 255 and person[5, 5] == 0  # face is person, top-left corner is not


def test_short_blackout_is_interpolated_without_shifting_later_frames(clean_run, clip, tmp_path):
    _, clean, _ = clean_run
    blanked = [np.zeros_like(f) if 40 <= t <= 44 else f for t, f in enumerate(clip)]
    facts, arrays = run_landmarks(tmp_path, blanked)
    lms, detected = arrays["lms"], arrays["detected"]
    assert lms.shape[0] == N_CLIP
    assert facts["landmarks"]["interpolated_frames"] == [[40, 44]]
    assert facts["landmarks"]["detected"] == N_CLIP - 5
    assert not detected[40:45].any() and detected[:40].all() and detected[45:].all()
    # later frames are the same faces as in the un-blanked run, not shifted by 5 frames
    err = np.abs(lms[50:, :, :2] - clean["lms"][50:, :, :2]).mean(axis=(1, 2))
    assert err.max() < 2.0
    shifted = np.abs(lms[50:, :, :2] - clean["lms"][45:-5, :, :2]).mean()
    assert shifted > err.mean()
    # interpolated frames lie between their detected neighbours
    lo = np.minimum(lms[39], lms[45]) - 1e-3
    hi = np.maximum(lms[39], lms[45]) + 1e-3
    assert ((lms[40:45] >= lo) & (lms[40:45] <= hi)).all()


def test_long_blackout_names_the_frames(clip, tmp_path):
    blanked = [np.zeros_like(f) if 20 <= t <= 39 else f for t, f in enumerate(clip[:60])]
    with pytest.raises(InputError, match=r"no face in frames 20-39 \(20 frames\)"):
        run_landmarks(tmp_path, blanked)
    assert not (tmp_path / S.LANDMARKS).exists()


def test_largest_of_two_faces_is_used(clip, clean_run, shared_data, tmp_path, caplog):
    import cv2

    _, clean, _ = clean_run
    small = [cv2.resize(f, (200, 200), interpolation=cv2.INTER_AREA)
             for f in iter_frames(shared_data / "german_anchor_mimictalk_20s.mp4", 0, 20)]
    frames = []
    for f, s in zip(clip[:20], small):
        f = f.copy()
        f[:200, :200] = s   # a second, smaller presenter in the top-left corner
        frames.append(f)
    with caplog.at_level(logging.WARNING, logger="synctalk"):
        facts, arrays = run_landmarks(tmp_path, frames)
    assert facts["landmarks"]["multi_face_frames"] >= 15
    assert any("more than one face" in r.getMessage() for r in caplog.records)
    err = np.abs(arrays["lms"][:, :, :2] - clean["lms"][:20, :, :2]).mean(axis=(1, 2))
    assert err.max() < 3.0   # the big anchor, not the small face (which would be ~200 px away)


@pytest.mark.parametrize("missing, expected", [
    ([], []), ([0, 1], [(0, 1)]), ([3], [(3, 3)]), ([2, 3, 7, 9], [(2, 3), (7, 7), (9, 9)]),
])
def test_missing_runs(missing: list[int], expected: list[tuple[int, int]]):
    detected = np.ones(10, dtype=bool)
    detected[missing] = False
    assert L.missing_runs(detected) == expected


def test_fill_gaps_holds_ends_and_interpolates():
    lms = np.zeros((8, 478, 3), dtype=np.float32)
    detected = np.array([False, True, True, False, False, True, True, False])
    lms[1], lms[2], lms[5], lms[6] = 1.0, 2.0, 5.0, 6.0
    filled, runs = L.fill_gaps(lms, detected, max_gap_frames=2, max_missing_fraction=0.5)
    assert runs == [(0, 0), (3, 4), (7, 7)]
    assert np.allclose(filled[:, 0, 0], [1, 1, 2, 3, 4, 5, 6, 6])
    assert lms[0, 0, 0] == 0  # the input is not modified


@pytest.mark.parametrize("kwargs, message", [
    ({"max_gap_frames": 1, "max_missing_fraction": 0.9}, r"frames 3-4 \(2 frames\)"),
    ({"max_gap_frames": 5, "max_missing_fraction": 0.2}, r"no face in 4 of 8 frames"),
])
def test_fill_gaps_refuses(kwargs: dict, message: str):
    detected = np.array([False, True, True, False, False, True, True, False])
    with pytest.raises(InputError, match=message):
        L.fill_gaps(np.zeros((8, 478, 3), np.float32), detected, **kwargs)


def test_no_face_at_all():
    with pytest.raises(InputError, match="no face found in any"):
        L.fill_gaps(np.zeros((4, 478, 3), np.float32), np.zeros(4, bool), 12, 0.05)
