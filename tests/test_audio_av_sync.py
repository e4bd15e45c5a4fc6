"""Landmark lip-sync score: sign convention on synthetic signals, calibration on the real anchor clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synctalk.audio.av_sync import offset_correlations, score_sync


def test_offset_sign_convention():
    rng = np.random.default_rng(0)
    mouth = np.convolve(rng.random(400), np.ones(3) / 3, mode="same")
    late_audio = np.concatenate([np.zeros(7), mouth[:-7]])  # the sound comes 7 frames after the mouth
    corr = offset_correlations(mouth, late_audio, 15)
    assert int(np.argmax(corr)) - 15 == 7


@pytest.fixture(scope="module")
def anchor(anchor_video: Path):
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.mouth import face_mesh_landmarks

    lms, detected, fps = face_mesh_landmarks(anchor_video)
    assert fps == 25 and detected.all()
    wav = load_driving_audio(anchor_video)
    return lms, wav


@pytest.mark.slow
def test_real_anchor_in_sync_and_shifted_not(anchor):
    from synctalk.audio.av_sync import speech_frames

    lms, wav = anchor
    n = len(lms)
    speech = speech_frames(wav, n)
    assert 0.6 < speech.mean() < 0.98  # a presenter talking nearly all the time, with pauses
    score = score_sync(lms, wav, speech)
    assert score.in_sync(), score
    assert score.peak_correlation > 0.2
    assert score.silent_frames > 0 and score.silent_frames_closed is not None
    delayed = np.concatenate([np.zeros(10 * 640, np.float32), wav])  # audio 10 frames late
    shifted = score_sync(lms, delayed, np.concatenate([np.zeros(10, bool), speech])[:n])
    assert not shifted.in_sync()
    assert abs(shifted.best_offset - 10) <= 1, shifted.best_offset


def test_cli_sync_score(shared_data: Path, tmp_path: Path, capsys):
    from synctalk.cli import main

    out = tmp_path / "score.json"
    assert main(["sync-score", str(shared_data / "may_real3dportrait_5s.mp4"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best offset" in text and "peak correlation" in text and "mouth closed" in text
    data = json.loads(out.read_text())
    assert len(data["correlations"]) == 31 and data["frames"] == 125
    assert main(["sync-score", str(tmp_path / "absent.mp4")]) == 1
