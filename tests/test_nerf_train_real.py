"""The `tiny` preset on a real prepared subject: the first 3 s of the CNN anchor clip (CPU).

The audio features are a fixed random array here (the audio encoder is trained by the audio stage,
tested in tests/test_audio_*.py); this test is about the head model fitting real footage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def cut_clip(src: Path, dst: Path, seconds: float) -> None:
    """Re-encode the first ``seconds`` of a 25-fps ``src`` (video + 16 kHz audio) with synctalk's writer."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.io.video import VideoWriter, iter_frames

    n = int(round(seconds * 25))
    audio = load_driving_audio(src)[: int(seconds * 16000)]
    with VideoWriter(dst, fps=25, crf=16, audio=audio, sample_rate=16000) as writer:
        for frame in iter_frames(src, 0, n):
            writer.write(frame)


@pytest.fixture(scope="module")
def short_subject(anchor_video: Path, tmp_path_factory) -> Path:
    from synctalk import subject as S
    from synctalk.nerf.data import AUDIO_FEATURES
    from synctalk.prepare.pipeline import prepare

    tmp = tmp_path_factory.mktemp("nerf_train_real")
    clip = tmp / "anchor_3s.mp4"
    cut_clip(anchor_video, clip, 3.0)
    root = tmp / "subject"
    prepare(clip, root)
    n = S.Subject(root).n_frames
    (root / AUDIO_FEATURES).parent.mkdir(exist_ok=True)
    np.save(root / AUDIO_FEATURES, np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32))
    return root


def test_tiny_training_on_real_footage(short_subject: Path, tmp_path: Path):
    from synctalk.nerf.data import load_subject
    from synctalk.nerf.presets import preset
    from synctalk.nerf.render_views import evaluate_frames
    from synctalk.nerf.train_run import train_subject
    from synctalk.nerf.trainer import Trainer

    cfg = preset("tiny", head_steps=80, lips_steps=4, val_every=40)
    data = load_subject(short_subject, "cpu", downscale=cfg.downscale, max_frames=cfg.max_frames)
    # The scene transform puts the head well inside the unit box (derive_scene targets 0.8).
    assert 0.5 < data.scene.scale * max(data.scene.head_half_extent) < 0.9
    untrained = Trainer(data, cfg, tmp_path / "untrained")
    before = evaluate_frames(untrained, [int(data.train_ids[3])])
    first = untrained.head_step()

    work = tmp_path / "work"
    summary = train_subject(short_subject, cfg, ("head", "lips"), workdir=work)
    head = summary["stages"]["head"]
    assert head["loss"] < float(first["loss"])
    trained = Trainer(data, cfg, work)
    trained.load(work / "checkpoints" / "lips")
    after = evaluate_frames(trained, [int(data.train_ids[3])])
    assert after["psnr_head"] > before["psnr_head"] + 2.0, (before["psnr_head"], after["psnr_head"])
    assert math.isfinite(summary["test"]["psnr"])
    for name in ("psnr_curve.png", "metrics.json", "head_model.json", "lips_model.safetensors",
                 "checkpoints/latest.json"):
        assert (work / name).is_file(), name
    assert len(summary["history"]) >= 3  # validations at head 40, 80 and the end of the lip stage
