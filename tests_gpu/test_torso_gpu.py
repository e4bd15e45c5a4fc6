"""Torso inference on CUDA: the one-plane use of the head's fused hash-grid kernel and the fast
per-frame render path agree with the training (per-ray, PyTorch) path.

Usage: PYTHONPATH=. python -m pytest tests_gpu/test_torso_gpu.py -q
"""

from __future__ import annotations

import pytest
import torch

from synctalk.nerf.data import SceneTransform
from synctalk.torso.field import TorsoField, TorsoFieldConfig, normalised_pixel_centres
from synctalk.torso.grid2d import TORSO_GRID, encode_reference
from synctalk.torso.model import TorsoModel

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from synctalk.torso.grid2d import encode_fused  # noqa: E402

DEVICE = torch.device("cuda")


def test_fused_grid_matches_reference():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    from synctalk.nerf.encoding.hashgrid import level_layout

    table = torch.randn(level_layout(TORSO_GRID).total_rows, 2, device=DEVICE, generator=g)
    xy = torch.rand(100_000, 2, device=DEVICE, generator=g) * 2.2 - 1.1  # some outside: clamped
    ref = encode_reference(xy, table, TORSO_GRID)
    fused = encode_fused(xy, table, TORSO_GRID)
    err = float((fused - ref).norm() / ref.norm())
    assert err < 1e-4, err


def _random_field(n_codes: int = 10) -> TorsoField:
    torch.manual_seed(0)
    field = TorsoField(TorsoFieldConfig(num_codes=n_codes)).to(DEVICE)
    with torch.no_grad():  # a non-trivial field: random codes, grid and deformation
        field.codes.normal_(0, 0.5)
        field.grid.table.normal_(0, 0.3)
        field.deform[-1].weight.normal_(0, 0.05)
    return field


@pytest.mark.parametrize("amp", [False, True])
def test_render_matches_per_ray_forward(amp: bool):
    h = w = 64
    field = _random_field()
    plate = torch.zeros(h, w, 3, dtype=torch.uint8, device=DEVICE)
    occupancy = torch.ones(16, 16, dtype=torch.bool, device=DEVICE)
    trained = torch.ones(10, dtype=torch.bool, device=DEVICE)
    model = TorsoModel(field, trained, occupancy, plate, SceneTransform(1.0, (0, 0, 0), (1, 1, 1)), render_scale=1.0,
                       amp=amp)
    c2w = torch.eye(4, device=DEVICE).repeat(2, 1, 1)
    c2w[:, 2, 3] = torch.tensor([2.5, 2.7], device=DEVICE)
    ids = torch.tensor([3, 7], device=DEVICE)
    rgb, alpha = model.render(ids, c2w)
    ys, xs = torch.meshgrid(torch.arange(h, device=DEVICE), torch.arange(w, device=DEVICE), indexing="ij")
    xy = normalised_pixel_centres(xs.reshape(-1), ys.reshape(-1), w, h)
    for k in range(2):
        with torch.no_grad():
            out = field(xy, field.pose_encoding(c2w[k:k + 1]), field.codes[ids[k:k + 1]],
                        torch.zeros(h * w, dtype=torch.long, device=DEVICE))
        tol = 2e-2 if amp else 1e-4
        assert (alpha[k].reshape(-1) - out["alpha"]).abs().max() < tol
        # rgb is zeroed where alpha is 0: compare premultiplied colour
        premul = rgb[k].reshape(-1, 3) * alpha[k].reshape(-1, 1)
        assert (premul - out["rgb"] * out["alpha"][:, None]).abs().max() < tol
