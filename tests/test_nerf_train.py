"""Trainer mechanics on a small synthetic scene (CPU, seconds): checkpoints, exact resume, NaN stop,
the loop-free marcher, the losses. The real-footage run is in test_nerf_train_real.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.errors import InputError, StageError
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform, TrainData, derive_scene, landmark_boxes
from synctalk.nerf.losses import SsimLoss, head_losses, HeadLossWeights
from synctalk.nerf.presets import parse_overrides, preset
from synctalk.nerf.render.occupancy import OccupancyConfig, OccupancyGrid
from synctalk.nerf.render.raymarch import march_rays, march_rays_lattice
from synctalk.nerf.trainer import Trainer

from scenes import look_at_origin

SIZE = 24


def synthetic_data(n: int = 6) -> TrainData:
    """A coloured disc (the 'head') over a grey gradient background, seen from n nearby cameras."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2) < (SIZE / 4) ** 2
    bg = np.stack([np.full((SIZE, SIZE), 90), xx * 4, yy * 4], -1).astype(np.uint8)
    gt = bg.copy()
    gt[disc] = (200, 120, 60)
    f = SIZE * 1.2
    box = torch.tensor([[4, 4, SIZE - 4, SIZE - 4]] * n)
    return TrainData(
        gt=torch.from_numpy(np.stack([gt] * n)), bg=torch.from_numpy(np.stack([bg] * n)),
        head=torch.from_numpy(np.stack([disc.astype(np.uint8)] * n)),
        c2w=torch.tensor(np.stack([look_at_origin(0.05 * (i - n / 2)) for i in range(n)]), dtype=torch.float32),
        intrinsics=torch.tensor([f, f, SIZE / 2, SIZE / 2]), expressions=torch.rand(n, 7, generator=torch.Generator().manual_seed(1)),
        audio=torch.randn(n, 512, generator=torch.Generator().manual_seed(2)),
        head_box=box, face_rect=box, lower_face=torch.tensor([[6, 12, SIZE - 6, SIZE - 4]] * n),
        lip_box=torch.tensor([[8, 12, 16, 20]] * n), train_ids=torch.arange(n - 1), test_ids=torch.tensor([n - 1]),
        scene=SceneTransform(1.0, (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)))


def tiny_cfg(**kw):
    base = dict(head_steps=8, lips_steps=2, rays_per_step=256, images_per_step=2, occupancy_resolution=16,
                occupancy_every=4, lip_patches=2, patch_size=8, ema_every=2, val_every=1000,
                checkpoint_every=1000, perceptual="ssim", max_frames=None, downscale=1)
    base.update(kw)
    return preset("tiny", **base)


def resumed_after(cfg, workdir, stop_at: int) -> Trainer:
    """A head stage interrupted at ``stop_at``, saved, and loaded into a fresh Trainer (resume tests)."""
    half = Trainer(synthetic_data(), cfg, workdir / "half")
    half.train_stage("head", stop_at=stop_at)
    half.save(workdir / "half" / "latest")
    resumed = Trainer(synthetic_data(), cfg, workdir / "resumed")
    resumed.load(workdir / "half" / "latest")
    return resumed


def test_resume_is_exact(tmp_path):
    cfg = tiny_cfg()
    full = Trainer(synthetic_data(), cfg, tmp_path / "a")
    full.train_stage("head")
    full.train_stage("lips")

    resumed = resumed_after(cfg, tmp_path, stop_at=5)    # interrupted mid-stage
    assert (resumed.stage, resumed.stage_step) == ("head", 5)
    resumed.train_stage("head")
    resumed.train_stage("lips")
    for (name, a), (_, b) in zip(full.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.equal(a, b), name
    for name in full.ema:
        assert torch.equal(full.ema[name], resumed.ema[name]), name
    assert torch.equal(full.grid.density, resumed.grid.density)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    trainer = Trainer(synthetic_data(), tiny_cfg(head_steps=5), tmp_path)
    trainer.train_stage("head")
    stem = tmp_path / "ck"
    trainer.save(stem)
    tensors, meta = ckpt.load_checkpoint(stem)
    assert meta["stage"] == "head" and meta["stage_step"] == 5
    for k, v in trainer.field.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    assert meta["scene"]["scale"] == 1.0
    # A truncated tensor file is refused with one clear message, not a traceback from safetensors.
    data = ckpt.tensor_path(stem).read_bytes()
    ckpt.tensor_path(stem).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="incomplete"):
        ckpt.load_checkpoint(stem)
    with pytest.raises(InputError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing")


def test_nan_stops_training_and_is_never_saved(tmp_path):
    trainer = Trainer(synthetic_data(), tiny_cfg(head_steps=3), tmp_path)
    with torch.no_grad():
        trainer.field.sigma_net[0].weight.fill_(float("nan"))
    with pytest.raises(StageError, match="diverged at step 0 .the density field holds NaN"):
        trainer.train_stage("head")
    with pytest.raises(StageError, match="NaN"):
        trainer.save(tmp_path / "bad")
    assert not ckpt.meta_path(tmp_path / "bad").exists()


def test_head_training_fits_synthetic_scene(tmp_path):
    trainer = Trainer(synthetic_data(), tiny_cfg(head_steps=40, rays_per_step=256), tmp_path)
    first = trainer.head_step()
    trainer.stage_step = 0
    stats = trainer.train_stage("head")
    assert stats["psnr"] > -10 * math.log10(float(first["mse"])) + 4.0


def test_lattice_marcher_matches_loop_marcher():
    g = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(OccupancyConfig(resolution=16))
    grid.occupied = torch.rand(16, 16, 16, generator=g) < 0.3
    origins = torch.randn(300, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 2.5])
    dirs = torch.tensor([0.0, 0.0, -1.0]) + torch.randn(300, 3, generator=g) * 0.2
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    aabb = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
    loop = march_rays(origins, dirs, grid, aabb, max_samples=16)
    fast = march_rays_lattice(origins, dirs, grid, aabb, max_samples=16)
    assert loop.num_samples > 500
    # Same samples except where float rounding puts a lattice point exactly on a cell face.
    assert abs(loop.num_samples - fast.num_samples) <= 0.03 * loop.num_samples
    same = set(zip(loop.ray_indices.tolist(), (loop.t * 1e4).round().long().tolist()))
    got = set(zip(fast.ray_indices.tolist(), (fast.t * 1e4).round().long().tolist()))
    assert len(same & got) >= 0.97 * len(same)
    assert torch.all(fast.ray_indices[1:] >= fast.ray_indices[:-1])


def test_head_losses_attention_regions():
    r = 8
    pred, gt = torch.zeros(r, 3), torch.ones(r, 3) * 0.5
    lower = torch.tensor([True] * 4 + [False] * 4)
    ones = torch.ones(r)
    w = HeadLossWeights()
    audio_out = head_losses(pred, gt, ones * 0.5, ones, ones * torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]),
                            torch.zeros(r), lower, lower, 1.0, w)
    audio_in = head_losses(pred, gt, ones * 0.5, ones, ones * torch.tensor([1, 1, 1, 1, 0, 0, 0, 0.0]),
                           torch.zeros(r), lower, lower, 1.0, w)
    # The audio gate is penalised only outside the lower face; the expression gate only inside.
    assert audio_out["attention"] > 0 and audio_in["attention"] == 0
    expr_in = head_losses(pred, gt, ones * 0.5, ones, torch.zeros(r), lower.float(), lower, lower, 1.0, w)
    assert expr_in["attention"] > 0
    assert torch.isclose(audio_out["l1"], torch.tensor(0.5))  # s = 1, equal uncertainty -> weight 1


def test_ssim_loss_orders_distortions():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 32, 32, generator=g)
    loss = SsimLoss()
    assert float(loss(img, img)) < 1e-6
    assert float(loss(img + 0.02 * torch.randn(img.shape, generator=g), img)) < float(
        loss(img + 0.2 * torch.randn(img.shape, generator=g), img))


def test_scene_transform_centres_head_boxes():
    poses = np.stack([look_at_origin(a) for a in (-0.1, 0.0, 0.1)])
    intr = np.array([500.0, 500.0, 256.0, 256.0])
    boxes = np.array([[206.0, 186.0, 306.0, 306.0]] * 3)  # 100 x 120 px around slightly low centre
    scene = derive_scene(poses, intr, boxes, fill=0.8)
    # Half-height: 60 px at depth 2.5 and f 500 -> 0.3 world units; the largest extent maps to 0.8.
    assert scene.head_half_extent[1] == pytest.approx(0.3, rel=0.05)
    assert scene.scale == pytest.approx(0.8 / 0.3, rel=0.05)
    assert scene.offset[1] == pytest.approx(0.05, abs=0.01)   # box centre 10 px above the principal point (+y up)


def test_landmark_boxes_lip_box_is_square():
    lms = np.zeros((1, 478, 3), np.float32)
    lms[0, :, 0] = np.linspace(100, 400, 478)
    lms[0, :, 1] = np.linspace(80, 420, 478)
    boxes = landmark_boxes(lms, 512, 512)
    x0, y0, x1, y1 = boxes["lip_box"][0]
    assert abs((x1 - x0) - (y1 - y0)) <= 1
    assert boxes["lower_face"][0][1] == round(float(lms[0, 1, 1]))


def test_parse_overrides_types():
    assert parse_overrides(["head_steps=10", "amp=false", "lr_grid=0.02", "perceptual=none"]) == {
        "head_steps": 10, "amp": False, "lr_grid": 0.02, "perceptual": "none"}
    with pytest.raises(InputError):
        parse_overrides(["nope=1"])
    with pytest.raises(InputError):
        preset("huge")


def test_generalisation_settings_resume_exactly_and_old_configs_load(tmp_path):
    """audio_noise draws from the checkpointed RNG (resume stays exact); configs saved before these
    settings existed load with the defaults that reproduce the original's behaviour."""
    from synctalk.nerf.train_run import config_from_checkpoint

    cfg = tiny_cfg(audio_noise=0.5, attention_on_gated=True, lips_lr_scale=0.3, max_samples=24, dt=0.02)
    full = Trainer(synthetic_data(), cfg, tmp_path / "a")
    full.train_stage("head")
    full.train_stage("lips")
    resumed = resumed_after(cfg, tmp_path, stop_at=3)
    resumed.train_stage("head")
    resumed.train_stage("lips")
    for (name, a), (_, b) in zip(full.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.equal(a, b), name
    assert full.optimizer.param_groups[0]["lr"] < 0.3 * cfg.lr_grid  # the lip stage starts scaled down
    old = {k: v for k, v in cfg.to_json().items()
           if k not in ("audio_noise", "attention_on_gated", "lips_lr_scale", "dt")}
    restored = config_from_checkpoint({"config": old})
    assert (restored.audio_noise, restored.attention_on_gated, restored.lips_lr_scale) == (0.0, False, 1.0)
    assert restored.dt == pytest.approx(2 * math.sqrt(3) / 128)


def test_audio_noise_only_perturbs_training_codes():
    data = synthetic_data()
    frames = torch.tensor([0, 1])
    plain = Trainer(data, tiny_cfg(), "/tmp/unused")
    noisy = Trainer(data, tiny_cfg(audio_noise=1.0), "/tmp/unused")
    assert torch.equal(plain.training_audio_codes(frames), plain.audio_codes(frames))
    assert torch.equal(noisy.audio_codes(frames), plain.audio_codes(frames))  # same init, rendering untouched
    assert not torch.allclose(noisy.training_audio_codes(frames), noisy.audio_codes(frames))
