"""Lip-stage settings (CPU, seconds): `lips_anchor_rays` adds head-stage rays to every lip step and keeps
resume exact; `lips_lr_scale` scales the lip stage's starting learning rate."""

from __future__ import annotations

import torch

from synctalk.nerf.presets import preset
from synctalk.nerf.trainer import Trainer

from test_nerf_train import synthetic_data, tiny_cfg


def _rendered_batches(trainer: Trainer) -> list:
    """Record every RayBatch the trainer renders (wraps the bound method on this instance only)."""
    seen = []
    real = trainer.render_rays

    def spy(batch, codes, jitter):
        seen.append(batch)
        return real(batch, codes, jitter)

    trainer.render_rays = spy
    return seen


def test_anchor_rays_supervise_the_whole_head_only_when_asked(tmp_path):
    data = synthetic_data()
    head = Trainer(data, tiny_cfg(), tmp_path / "h")
    head.train_stage("head")
    head.save(tmp_path / "head")

    per_step = {}
    for anchor in (0, 64):
        trainer = Trainer(data, tiny_cfg(lips_anchor_rays=anchor), tmp_path / f"l{anchor}")
        trainer.load(tmp_path / "head")
        seen = _rendered_batches(trainer)
        trainer.train_stage("lips")
        per_step[anchor] = seen
    assert len(per_step[0]) == 2 and len(per_step[64]) == 4  # lips_steps=2: one extra batch per step
    # The anchor rays are drawn after the lip batch, so the first lip batch is the same draw either way.
    plain, anchored = per_step[0][0], per_step[64][0]
    assert torch.equal(plain.xs, anchored.xs) and torch.equal(plain.ys, anchored.ys)
    for batch in per_step[64][1::2]:
        assert batch.xs.shape[0] == 64
        lower = data.lower_face[batch.frames]
        outside = (batch.ys < lower[:, 1]) | (batch.ys >= lower[:, 3]) | (batch.xs < lower[:, 0]) \
            | (batch.xs >= lower[:, 2])
        assert bool(outside.any())  # supervision beyond the mouth region


def test_anchor_rays_resume_exactly(tmp_path):
    cfg = tiny_cfg(lips_anchor_rays=32, lips_steps=4)
    full = Trainer(synthetic_data(), cfg, tmp_path / "a")
    full.train_stage("head")
    full.train_stage("lips")
    half = Trainer(synthetic_data(), cfg, tmp_path / "b")
    half.train_stage("head")
    half.train_stage("lips", stop_at=2)
    half.save(tmp_path / "b" / "latest")
    resumed = Trainer(synthetic_data(), cfg, tmp_path / "c")
    resumed.load(tmp_path / "b" / "latest")
    resumed.train_stage("lips")
    for (name, a), (_, b) in zip(full.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.equal(a, b), name


def test_lip_stage_starts_at_its_scaled_rate(tmp_path):
    cfg = preset("fast", device="cpu", amp=False, head_steps=1, lips_steps=1, rays_per_step=64, lips_lr_scale=0.1,
                 images_per_step=2, lip_patches=1, patch_size=8, occupancy_resolution=16, perceptual="none")
    trainer = Trainer(synthetic_data(), cfg, tmp_path)
    trainer.stage, trainer.stage_step = "lips", 0
    trainer._set_lr(cfg.lips_steps)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == group["base_lr"] * cfg.lips_lr_scale
    assert trainer.optimizer.param_groups[0]["lr"] < trainer.optimizer.param_groups[0]["base_lr"]
