"""Torso model mechanics on small synthetic inputs (CPU, seconds): the 2-D grid, the fast render path
against the per-ray training path, individual codes, export/load, presets. Training on real footage
is in test_torso_train_real.py."""

from __future__ import annotations

import pytest
import torch

from synctalk.errors import InputError
from synctalk.nerf.data import SceneTransform
from synctalk.nerf.encoding.hashgrid import level_layout
from synctalk.torso.field import TorsoField, TorsoFieldConfig, normalised_pixel_centres
from synctalk.torso.grid2d import TORSO_GRID, encode_reference
from synctalk.torso.model import TorsoModel, export_torso, load_torso, occupancy_box
from synctalk.torso.presets import parse_torso_overrides, torso_preset

SCENE = SceneTransform(2.0, (0.0, 0.1, -0.1), (0.3, 0.4, 0.3))


def random_field(n_codes: int = 6) -> TorsoField:
    torch.manual_seed(0)
    field = TorsoField(TorsoFieldConfig(num_codes=n_codes))
    with torch.no_grad():  # a field that actually deforms and varies per code
        field.codes.normal_(0, 0.5)
        field.grid.table.normal_(0, 0.3)
        field.deform[-1].weight.normal_(0, 0.05)
    return field


def poses(n: int) -> torch.Tensor:
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, 2, 3] = 2.5 + 0.1 * torch.arange(n)
    c2w[:, 0, 3] = 0.05 * torch.arange(n)
    return c2w


def test_grid_gives_coordinate_gradients():
    """The deformation learns through the grid lookup: d(features)/d(xy) must match finite differences."""
    table = torch.randn(level_layout(TORSO_GRID).total_rows, 2, dtype=torch.float64)
    xy = torch.tensor([[0.123, -0.456]], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(TORSO_GRID.num_levels * 2, dtype=torch.float64)
    (encode_reference(xy, table, TORSO_GRID) @ weights).sum().backward()
    eps = 1e-7
    for axis in range(2):
        step = torch.zeros(1, 2, dtype=torch.float64)
        step[0, axis] = eps
        up = encode_reference(xy.detach() + step, table, TORSO_GRID) @ weights
        down = encode_reference(xy.detach() - step, table, TORSO_GRID) @ weights
        assert float(xy.grad[0, axis]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-4)


def test_fast_render_matches_per_ray_forward():
    h, w = 24, 32
    field = random_field()
    model = TorsoModel(field, torch.ones(6, dtype=torch.bool), torch.ones(8, 8, dtype=torch.bool),
                       torch.zeros(h, w, 3, dtype=torch.uint8), SCENE, render_scale=1.0)
    ids, c2w = torch.tensor([1, 4]), poses(2)
    rgb, alpha = model.render(ids, c2w)
    assert rgb.shape == (2, h, w, 3) and alpha.shape == (2, h, w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = normalised_pixel_centres(xs.reshape(-1), ys.reshape(-1), w, h)
    for k in range(2):
        with torch.no_grad():
            out = field(xy, field.pose_encoding(c2w[k:k + 1]), field.codes[ids[k:k + 1]],
                        torch.zeros(h * w, dtype=torch.long))
        torch.testing.assert_close(alpha[k].reshape(-1), out["alpha"], atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb[k].reshape(-1, 3) * alpha[k].reshape(-1, 1),
                                   out["rgb"] * out["alpha"][:, None], atol=1e-5, rtol=0)
    # The pose and the code both change the image.
    assert float((alpha[0] - alpha[1]).abs().max()) > 1e-3


def test_half_scale_render_and_occupancy_box():
    h, w = 32, 32
    occupancy = torch.zeros(8, 8, dtype=torch.bool)
    occupancy[5:, 1:7] = True                                    # the lower part of the frame
    model = TorsoModel(random_field(), torch.ones(6, dtype=torch.bool), occupancy,
                       torch.zeros(h, w, 3, dtype=torch.uint8), SCENE, render_scale=0.5)
    box = model.box
    assert (box.x0, box.y0, box.x1, box.y1, box.scale) == (4, 20, 28, 32, 0.5)
    rgb, alpha = model.render(torch.tensor([0]), poses(1))
    assert float(alpha[:, :20].abs().max()) == 0.0 and float(alpha[:, :, :4].abs().max()) == 0.0
    assert float(rgb[:, :20].abs().max()) == 0.0
    full = TorsoModel(model.field, model.trained, occupancy, model.plate, SCENE, render_scale=1.0)
    _, alpha_full = full.render(torch.tensor([0]), poses(1))
    # Half resolution + bilinear upsampling stays close to the full-resolution render of a smooth field.
    assert float((alpha_full - alpha).abs().mean()) < 0.1
    assert occupancy_box(torch.zeros(4, 4, dtype=torch.bool), h, w, 0.5).x1 == 0


def test_untrained_and_out_of_range_codes_use_the_trained_mean():
    field = random_field()
    trained = torch.tensor([True, True, False, True, False, False])
    codes = field.codes_of(torch.tensor([0, 2, 5, 99, -1]), trained)
    mean = field.codes.detach()[trained].mean(dim=0)
    torch.testing.assert_close(codes[0], field.codes.detach()[0])
    for k in (1, 2, 3, 4):
        torch.testing.assert_close(codes[k], mean)


def test_export_load_roundtrip_and_missing_model(tmp_path):
    with pytest.raises(InputError, match="no torso model"):
        load_torso(tmp_path, "cpu")
    field = random_field()
    plate = torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8)
    occupancy = torch.ones(4, 4, dtype=torch.bool)
    trained = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    export_torso(tmp_path / "torso_model", field, trained, occupancy, plate,
                 {"field": field.cfg.to_json(), "scene": SCENE.to_json(), "render_scale": 1.0, "amp": False})
    model = load_torso(tmp_path, "cpu")
    assert model.scene == SCENE and (model.height, model.width) == (16, 16)
    reference = TorsoModel(field, trained, occupancy, plate, SCENE, render_scale=1.0)
    ids, c2w = torch.tensor([0, 4]), poses(2)
    for a, b in zip(model.render(ids, c2w), reference.render(ids, c2w)):
        torch.testing.assert_close(a, b)
    composite = model.over_background(*model.render(ids[:1], c2w[:1]))
    assert composite.shape == (1, 16, 16, 3) and float(composite.min()) >= 0 and float(composite.max()) <= 1
    world = c2w.clone()
    world[:, :3, 3] = world[:, :3, 3] / SCENE.scale + torch.tensor(SCENE.offset)
    torch.testing.assert_close(model.pose_to_nerf(world), c2w)
    (tmp_path / "torso_model.safetensors").write_bytes(b"broken")
    with pytest.raises(InputError):
        load_torso(tmp_path, "cpu")


def test_presets_and_overrides():
    assert parse_torso_overrides(["steps=10", "amp=false", "lr_grid=0.5", "test_frames=none"]) == {
        "steps": 10, "amp": False, "lr_grid": 0.5, "test_frames": None}
    assert torso_preset("tiny", steps=7).steps == 7
    with pytest.raises(InputError):
        parse_torso_overrides(["head_steps=3"])
    with pytest.raises(InputError):
        torso_preset("huge")


def test_pose_standardisation_spreads_the_pose_signal():
    """Standardised projected anchors have zero mean and unit spread over the training poses."""
    field = TorsoField(TorsoFieldConfig(num_codes=4))
    c2w = poses(12)
    field.set_pose_statistics(c2w)
    standard = (field.projected_anchors(c2w) - field.pose_mean) / field.pose_std
    torch.testing.assert_close(standard.mean(dim=0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(dim=0), torch.ones(6), atol=1e-4, rtol=0)
    assert field.pose_encoding(c2w).shape == (12, field.pose_dim)
