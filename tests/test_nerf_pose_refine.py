"""Photometric camera refinement (`pose_refine`): the rotation map, the corrected rays, the row-sparse
optimiser, and that the trainer's corrections recover a known pose error (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from synctalk.nerf.pose_refine import RowAdam, so3_exp
from synctalk.nerf.trainer import RayBatch, Trainer

from test_nerf_train import resumed_after, synthetic_data, tiny_cfg


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[:, 0])
    return torch.stack([z, -w[:, 2], w[:, 1], w[:, 2], z, -w[:, 0], -w[:, 1], w[:, 0], z], -1).reshape(-1, 3, 3)


def test_so3_exp_matches_matrix_exponential_and_is_smooth_at_zero():
    w = torch.cat([torch.randn(16, 3, dtype=torch.float64), 1e-6 * torch.randn(4, 3, dtype=torch.float64),
                   torch.zeros(1, 3, dtype=torch.float64)])
    assert torch.allclose(so3_exp(w), torch.linalg.matrix_exp(_skew(w)), atol=1e-12)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(so3_exp(zero)[0, 0, 1], zero)   # d R01 / dw = -e_z at w = 0
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))


def test_corrected_rays_turn_by_pixels_and_move_origins():
    data = synthetic_data()
    fx = float(data.intrinsics[0])
    frames = torch.tensor([1, 1])
    xs, ys = torch.tensor([10, 9]), torch.tensor([7, 7])
    o0, d0 = data.rays(frames, xs, ys)
    # Turning the camera by 1/fx rad about its own y axis = looking one pixel column over.
    rot = so3_exp(torch.tensor([[0.0, 1.0 / fx, 0.0]]).expand(2, 3))
    o1, d1 = data.rays(frames, xs, ys, (rot, torch.zeros(2, 3)))
    assert torch.allclose(o1, o0)
    assert torch.allclose(d1[0], d0[1], atol=2e-3) and not torch.allclose(d1[0], d0[0], atol=2e-2)
    trans = torch.tensor([[0.1, 0.0, 0.0]]).expand(2, 3)
    o2, d2 = data.rays(frames, xs, ys, (torch.eye(3).expand(2, 3, 3), trans))
    assert torch.allclose(d2, d0)
    assert torch.allclose(o2 - o0, data.c2w[1, :3, 0].expand(2, 3) * 0.1, atol=1e-6)  # along the camera's x


def test_row_adam_moves_only_the_rows_it_is_given():
    param = torch.nn.Parameter(torch.zeros(5, 6))
    opt = RowAdam(param, lr=0.05)
    param.grad = torch.randn(5, 6)
    opt.step(torch.tensor([1, 3]))
    assert torch.equal(param[[0, 2, 4]], torch.zeros(3, 6))
    # First visit with beta1 = 0: a step of exactly lr against the gradient's sign.
    assert torch.allclose(param[[1, 3]].abs(), torch.full((2, 6), 0.05))
    assert param.grad is None and opt.count.tolist() == [0, 1, 0, 1, 0]


FITTED = dict(head_steps=120, rays_per_step=512)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The disc scene fitted once (no pose refinement); tests load it into their own Trainer."""
    work = tmp_path_factory.mktemp("fitted")
    torch.manual_seed(0)
    trainer = Trainer(synthetic_data(), tiny_cfg(**FITTED), work)
    trainer.train_stage("head")
    trainer.save(work / "state")
    return work / "state"


def _fitted_trainer(state, tmp_path, **kw) -> Trainer:
    trainer = Trainer(synthetic_data(), tiny_cfg(**FITTED, **kw), tmp_path)
    trainer.load(state)
    return trainer


def test_trainer_learns_corrections_for_training_frames_only_and_resumes_exactly(tmp_path):
    cfg = tiny_cfg(pose_refine=True, lr_pose=0.2, pose_refine_start=0.25)
    full = Trainer(synthetic_data(), cfg, tmp_path / "a")
    full.train_stage("head")
    delta = full.poses.delta.detach()
    train, test = full.data.train_ids, full.data.test_ids
    assert float(delta[train].abs().sum()) > 0
    assert torch.equal(delta[test], torch.zeros_like(delta[test]))           # never corrected
    assert torch.allclose(delta[train].mean(dim=0), torch.zeros(6), atol=1e-6)  # gauge fixed
    full.train_stage("lips")                                                   # poses are not learned here
    assert torch.equal(full.poses.delta.detach(), delta)

    resumed = resumed_after(cfg, tmp_path, stop_at=5)
    resumed.train_stage("head")
    assert torch.equal(resumed.poses.delta.detach(), delta)
    head_only = Trainer(synthetic_data(), cfg, tmp_path / "d")
    head_only.train_stage("head")
    for (name, a), (_, b) in zip(head_only.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.equal(a, b), name


def test_corrections_recover_a_known_camera_error(fitted, tmp_path):
    """Fit the disc scene, then turn frame 1's camera by 2 px: refining that frame alone against the
    fitted field must turn it back (the image shift of the correction is about -2 px) and lower its loss."""
    trainer = _fitted_trainer(fitted, tmp_path, pose_refine=True, pose_refine_start=2.0)
    data, fx = trainer.data, float(trainer.data.intrinsics[0])
    turn = so3_exp(torch.tensor([[0.0, 2.0 / fx, 0.0]]))[0]
    data.c2w[1, :3, :3] = data.c2w[1, :3, :3] @ turn
    trainer.stage_step = trainer.cfg.head_steps            # past the start: learning_poses() is on
    trainer.cfg = dataclasses.replace(trainer.cfg, pose_refine_start=0.0)
    opt = RowAdam(trainer.poses.delta, lr=0.1)
    ys, xs = torch.meshgrid(torch.arange(data.height), torch.arange(data.width), indexing="ij")
    batch = RayBatch(torch.ones(xs.numel(), dtype=torch.long), torch.zeros(xs.numel(), dtype=torch.long),
                     xs.reshape(-1), ys.reshape(-1))
    codes = trainer.audio_codes(torch.tensor([1]))

    def loss() -> torch.Tensor:
        return (trainer.render_rays(batch, codes.detach(), jitter=False)["rgb"] - trainer.gt_of(batch)).abs().mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(40):
        value = loss()
        trainer.field.zero_grad(set_to_none=True)
        value.backward()
        opt.step(torch.tensor([1]))
    with torch.no_grad():
        after = float(loss())
    d = trainer.poses.delta.detach()[1]
    # Image shift of the correction in px (one translation unit moves the head's image by ~1 px at the
    # mean camera distance): a turn about +y moves the scene right, a move along +x moves it left.
    shift = float(d[1]) - float(d[3])
    assert after < before * 0.9
    assert shift < -1.0 and math.isfinite(shift)
    assert np.isfinite(d.numpy()).all()


def test_exported_corrections_reach_the_renderer(tmp_path, monkeypatch):
    """The exported model carries every frame's correction; the render engine with corrected poses
    matches the trainer's own render of a training frame; RenderSession and the torso stage apply them."""
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import load_head_model
    from synctalk.render.session import RenderSession
    from synctalk.nerf.render_views import render_frame

    from test_render_engine import make_subject, train_and_export

    work = tmp_path / "w"
    trainer = train_and_export(work, pose_refine=True, lr_pose=0.5, pose_refine_start=0.0)
    data = trainer.data
    model = load_head_model(work, "cpu")
    corr = model.pose_correction
    assert corr is not None and corr.shape == (data.n_frames, 4, 4)
    eye = torch.eye(4)
    assert all(torch.equal(corr[i], eye) for i in data.test_ids.tolist())
    assert any(float((corr[i] - eye).abs().max()) > 1e-4 for i in data.train_ids.tolist())
    frames = torch.tensor([1, 3])
    engine = HeadRenderer(model, data.intrinsics, "cpu")
    codes = engine.audio_codes(data.audio, frames)
    bg = data.bg[frames].float() / 255.0
    out = engine.render(data.c2w[frames] @ corr[frames], codes, data.expressions[frames], bg)
    tracked = engine.render(data.c2w[frames], codes, data.expressions[frames], bg)
    with trainer.ema_weights():
        refs = [render_frame(trainer, int(i)) for i in frames]
    for k, ref in enumerate(refs):
        assert float((out.rgb[k] - ref).abs().max()) < 1e-4
    assert float((tracked.rgb - torch.stack(refs)).abs().max()) > 1e-3   # the corrections matter
    root = make_subject(tmp_path / "s", work)
    session = RenderSession(root, workspace=work, device="cpu")
    n = data.n_frames
    assert np.allclose(session.c2w_nerf[:n], (data.c2w @ corr).numpy(), atol=1e-5)
    # The torso stage trains against the same corrected cameras the renderer uses (its subject loader
    # is swapped for the synthetic scene's: this render subject has no landmarks).
    import synctalk.torso.train as torso_train
    from test_render_engine import synthetic_data as render_scene

    monkeypatch.setattr(torso_train, "load_subject", lambda *a, **k: render_scene())
    frozen, _ = torso_train.load_frozen_head(root, work, torch.device("cpu"))
    assert torch.allclose(frozen.data.c2w, data.c2w @ corr, atol=1e-5)
    assert frozen.poses is None


def test_refine_poses_fits_given_frames_and_leaves_training_state_alone(fitted, tmp_path):
    """refine_poses on a model trained without pose_refine: only the given frame's camera moves, towards
    undoing a known 2-px turn (upper head only), and a checkpoint saved afterwards holds no pose state."""
    from synctalk.nerf import checkpoint as ckpt
    from synctalk.nerf.pose_refine import refine_poses

    trainer = _fitted_trainer(fitted, tmp_path)
    data, fx = trainer.data, float(trainer.data.intrinsics[0])
    frame = 1
    data.c2w[frame, :3, :3] = data.c2w[frame, :3, :3] @ so3_exp(torch.tensor([[0.0, 2.0 / fx, 0.0]]))[0]
    facts = refine_poses(trainer, [frame], iterations=60, frames_per_iter=1, rays_per_frame=512, lr=0.2)
    d = trainer.poses.delta.detach()
    shift = float(d[frame, 1]) - float(d[frame, 3])
    assert -4.0 < shift < -1.0 and math.isfinite(facts["l1_upper_head"])
    others = torch.ones(data.n_frames, dtype=torch.bool)
    others[frame] = False
    assert torch.equal(d[others], torch.zeros_like(d[others]))
    assert all(p.requires_grad for p in trainer.field.parameters())   # the field is thawed again
    trainer.save(tmp_path / "after")
    tensors, _ = ckpt.load_checkpoint(tmp_path / "after")
    assert not any(k.startswith("pose") for k in tensors)
