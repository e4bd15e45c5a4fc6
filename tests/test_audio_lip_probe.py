"""lip_probe: ridge from per-frame inputs to the real lip height, fitted on train, scored on test."""

from __future__ import annotations

import numpy as np
import pytest

from synctalk.audio.lip_probe import lip_probe


def _lip(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 0.09 + 0.02 * np.sin(2 * np.pi * t / 6.3) + 0.004 * np.random.default_rng(seed).standard_normal(n)


def test_inputs_that_carry_the_mouth_predict_unseen_frames():
    lip = _lip(600)
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((1, 40))
    inputs = (lip[:, None] - lip.mean()) * 50 * mixing + rng.standard_normal((600, 40))   # lip, spread and noised
    probe = lip_probe(inputs, lip, 500, components=16)
    assert probe["r_test"] > 0.8 and probe["components"] == 16
    assert 0.5 < probe["std_ratio_test"] < 1.2


def test_inputs_that_only_identify_training_frames_fit_train_and_predict_nothing():
    """The leak the probe is for: per-frame codes with no mouth in them still fit the train frames."""
    lip = _lip(600)
    codes = np.random.default_rng(2).standard_normal((600, 256))
    probe = lip_probe(codes, lip, 500, components=200)
    assert probe["r_train"] > 0.5 and abs(probe["r_test"]) < 0.3


def test_too_little_to_say_and_mismatched_inputs():
    lip = _lip(100)
    assert lip_probe(np.zeros((100, 8)) + lip[:, None], lip, 95) is None           # 5 test frames
    assert lip_probe(np.random.default_rng(0).standard_normal((100, 64)), lip, 80) is None  # 80 < 2 x 64
    with pytest.raises(ValueError, match="cover 99 frames"):
        lip_probe(np.zeros((99, 8)), lip, 80)
