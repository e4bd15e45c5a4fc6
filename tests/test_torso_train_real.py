"""The torso stage on real footage (CPU, tiny presets): the prepared anchor subject (conftest, shared with
the pose/prepare tests), a tiny head on its first 48 frames, then `synctalk train --stage torso`; exact
resume, the NaN stop and the exported model. The head gets only a few steps: this test is about the
torso fitting the real torso.mp4 under a frozen head."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.errors import StageError

# Heavier than the unit tests (after the shared `prepared_anchor` fixture): a tiny head, 100 torso steps and
# two small evaluations on real frames; measured 4.5 min (load average ~5) to 13 min (~8) on the shared 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subject_with_head(prepared_anchor: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(a copy of the prepared anchor subject, a workspace holding a tiny head trained on its first 48
    frames at 1/4 size). The copy (25 MB) keeps the shared fixture untouched: random audio features
    are written into it when the audio stage has not run (the AVE is tested elsewhere)."""
    import shutil

    from synctalk import subject as S
    from synctalk.nerf.data import AUDIO_FEATURES
    from synctalk.nerf.presets import preset
    from synctalk.nerf.train_run import train_subject

    tmp = tmp_path_factory.mktemp("torso_real")
    root = tmp / "subject"
    shutil.copytree(prepared_anchor, root, ignore=shutil.ignore_patterns("workspace"))
    features = root / AUDIO_FEATURES
    if not features.is_file():
        features.parent.mkdir(exist_ok=True)
        n = S.Subject(root).n_frames
        np.save(features, np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32))
    work = tmp / "nerf"
    train_subject(root, preset("tiny", head_steps=8, val_every=1000, checkpoint_every=1000), ("head",),
                  workdir=work)
    return root, work


def train_args(root: Path, work: Path) -> argparse.Namespace:
    from synctalk.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return parser.parse_args([str(root), "--stage", "torso", "--preset", "tiny", "--workspace", str(work)])


def test_torso_stage_trains_exports_and_evaluates(subject_with_head: tuple[Path, Path]):
    from synctalk.cli import train_cmd
    from synctalk.nerf.data import load_subject
    from synctalk.torso import load_torso

    root, work = subject_with_head
    assert train_cmd.run(train_args(root, work)) == 0
    import json

    metrics = json.loads((work / "torso_metrics.json").read_text())
    for name in ("torso_model.safetensors", "torso_model.json", "checkpoints/torso.json",
                 "checkpoints/torso_latest.json", "torso_test"):
        assert (work / name).exists(), name
    test = metrics["test"]
    assert all(math.isfinite(test[k]) for k in ("psnr", "psnr_head_over_gt_torso", "psnr_torso"))

    # The exported model reproduces torso.mp4 of training frames clearly better than the untrained field
    # (alpha 0.5 grey everywhere), and its alpha follows the torso mask.
    from synctalk.torso.field import TorsoField
    from synctalk.torso.model import TorsoModel
    from synctalk.torso.train import load_torso_targets

    model = load_torso(work, "cpu")
    data = load_subject(root, "cpu", downscale=4, max_frames=48, scene=model.scene)
    ids = data.train_ids[:4]
    torso_gt = data.bg[ids].float() / 255

    def torso_psnr(m: TorsoModel) -> float:
        return -10 * math.log10(float(((m.over_background(*m.render(ids, data.c2w[ids])) - torso_gt) ** 2).mean()))

    untrained = TorsoModel(TorsoField(model.field.cfg), model.trained, torch.ones_like(model.occupancy), model.plate,
                           model.scene, render_scale=1.0)
    before, after = torso_psnr(untrained), torso_psnr(model)
    assert after > before + 3.0, (before, after)
    _, mask = load_torso_targets(root, data)
    _, alpha = model.render(ids, data.c2w[ids])
    on, off = float(alpha[mask[ids] == 1].mean()), float(alpha[mask[ids] == 0].mean())
    assert on > off + 0.3, (on, off)


def test_resume_is_exact_and_nan_stops(subject_with_head: tuple[Path, Path], tmp_path: Path):
    from synctalk.torso.presets import torso_preset
    from synctalk.torso.train import TorsoTrainer, load_frozen_head, load_torso_targets

    root, work = subject_with_head
    head, _ = load_frozen_head(root, work, torch.device("cpu"))
    plate, alpha = load_torso_targets(root, head.data)
    cfg = torso_preset("tiny", steps=8)
    full = TorsoTrainer(head, plate, alpha, cfg)
    full.train()
    half = TorsoTrainer(head, plate, alpha, cfg)
    half.train(stop_at=3)
    half.save(tmp_path / "latest")
    resumed = TorsoTrainer(head, plate, alpha, cfg)
    resumed.load(tmp_path / "latest")
    assert resumed.step == 3
    resumed.train()
    for (name, a), b in zip(full.field.state_dict().items(), resumed.field.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(full.seen, resumed.seen)

    with torch.no_grad():
        resumed.field.colour[0].weight.fill_(float("nan"))
    with pytest.raises(StageError, match="diverged"):
        resumed.train_step()
