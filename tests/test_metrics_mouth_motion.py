"""mouth_motion: the rendered lip-height series against the real one (synthetic series, then the real anchor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synctalk.audio.mouth import LOWER_OUTER_LIP, UPPER_OUTER_LIP
from synctalk.errors import InputError
from synctalk.metrics.mouth_motion import mouth_motion


def _face_with_lip_heights(heights: np.ndarray) -> np.ndarray:
    """Landmarks [N, 478, 3] of a 200-px face whose outer-lip height over face height is ``heights``."""
    lms = np.zeros((len(heights), 478, 3), np.float32)
    lms[:, 10, 1], lms[:, 152, 1] = 0.0, 200.0
    lms[:, UPPER_OUTER_LIP, 1] = 150.0
    lms[:, LOWER_OUTER_LIP, 1] = 150.0 + 200.0 * np.asarray(heights)
    return lms


def _speech_like(n: int, seed: int = 0) -> np.ndarray:
    """A lip-height series with syllable-rate (~4 Hz at 25 fps) opening and closing."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 0.09 + 0.02 * np.sin(2 * np.pi * t / 6.0 + rng.uniform(0, 0.5, n).cumsum() * 0.1) + 0.003 * rng.standard_normal(n)


def test_the_real_mouth_against_itself_and_a_damped_copy():
    real = _speech_like(200)
    same = mouth_motion(_face_with_lip_heights(real), _face_with_lip_heights(real))
    assert same["r"] == pytest.approx(1.0) and same["std_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert same["best_lag"] == 0
    damped = real.mean() + 0.3 * (real - real.mean())     # moves in step, a third as much
    d = mouth_motion(_face_with_lip_heights(damped), _face_with_lip_heights(real))
    assert d["r"] == pytest.approx(1.0, abs=1e-4) and d["std_ratio"] == pytest.approx(0.3, abs=1e-3)


def test_a_still_mouth_and_a_late_mouth():
    real = _speech_like(200)
    still = mouth_motion(_face_with_lip_heights(np.full(200, 0.09)), _face_with_lip_heights(real))
    assert still["r"] is None and still["std_ratio"] == pytest.approx(0.0, abs=1e-6)
    late = np.concatenate([np.full(3, real[0]), real[:-3]])   # the render opens 3 frames after the real mouth
    m = mouth_motion(_face_with_lip_heights(late), _face_with_lip_heights(real))
    assert m["best_lag"] == 3 and m["best_lag_r"] > 0.99 > m["r"]


def test_needs_the_same_frames_and_a_moving_real_mouth():
    real = _face_with_lip_heights(_speech_like(60))
    with pytest.raises(InputError, match="same frames"):
        mouth_motion(real[:50], real)
    with pytest.raises(InputError, match="at least"):
        mouth_motion(real[:10], real[:10])
    with pytest.raises(InputError, match="does not move"):
        mouth_motion(real, _face_with_lip_heights(np.full(60, 0.1)))


@pytest.mark.slow
def test_real_anchor_mouth_is_told_apart_from_another_stretch_of_itself(prepared_anchor: Path):
    """On the real anchor, its own mouth scores r = 1; a mouth that talks just as much but over other
    words (another 10 s of the same clip) scores near 0 and, 2 frames late, is found 2 frames late."""
    from synctalk import subject as S

    lms = S.Subject(prepared_anchor).landmarks()
    real, other = lms[:250], lms[250:500]
    assert mouth_motion(real, real)["r"] == pytest.approx(1.0)
    unrelated = mouth_motion(other, real)
    assert abs(unrelated["r"]) < 0.3, unrelated
    assert 0.6 < unrelated["std_ratio"] < 1.6, unrelated          # just as lively
    late = mouth_motion(lms[248:498], lms[250:500])                # frame t shows the real frame t - 2
    assert late["best_lag"] == 2 and late["best_lag_r"] == pytest.approx(1.0), late


@pytest.mark.slow
def test_evaluate_scores_mouth_motion_in_the_same_face_mesh_pass_as_av_sync(shared_data: Path):
    """`synctalk evaluate`'s per-mode sync scores carry mouth_motion when the real landmarks are given:
    real footage against its own face mesh scores r = 1, and the table prints it."""
    from synctalk.audio.mouth import face_mesh_landmarks
    from synctalk.evaluate.run import format_table, sync_metrics

    video = shared_data / "may_real3dportrait_5s.mp4"
    lms, _, _ = face_mesh_landmarks(video)
    scores = sync_metrics(video, None, "cpu", lms)
    assert "best_offset" in scores["av_sync"]
    assert scores["mouth_motion"]["r"] == pytest.approx(1.0, abs=1e-6)
    assert scores["mouth_motion"]["std_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert "mouth_motion" not in sync_metrics(video, None, "cpu")       # no ground truth, no comparison
    table = format_table({"modes": {"head": {"psnr": 30.0, "ssim": 0.9, **scores}}, "cross_driven": {}})
    assert "lip r" in table.splitlines()[0] and " 1.00 " in table.splitlines()[2]
