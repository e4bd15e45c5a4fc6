"""Tri-plane hash grid and SH encoding: hand-checked values, finite-difference gradients, layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.nerf.encoding.hashgrid import (HASH_PRIME_Y, HashGridConfig, TriPlaneHashGrid, corner_indices,
                                             hashgrid_encode_reference, level_layout)
from synctalk.nerf.encoding.sh import sh_encode


def test_default_layout_matches_original_parameter_count() -> None:
    layout = level_layout(HashGridConfig())
    assert layout.resolutions[:5] == (64, 78, 94, 113, 137) and layout.resolutions[-1] == 512
    assert layout.dense == (True,) * 4 + (False,) * 8
    assert layout.total_rows == 163_584  # per plane, as the original (~490k over three planes)
    assert TriPlaneHashGrid().output_dim == 36


def _single_level_cfg(resolution: int, log2_table: int) -> HashGridConfig:
    return HashGridConfig(num_levels=1, base_resolution=resolution, finest_resolution=resolution,
                          log2_table_size=log2_table)


def test_dense_level_exact_value_on_hand_checked_point() -> None:
    cfg = _single_level_cfg(4, 10)  # 5x5 vertices = 25 <= 1024: dense
    table = torch.zeros(3, level_layout(cfg).total_rows, 1, dtype=torch.float64)
    table[0, :25, 0] = torch.arange(25, dtype=torch.float64)  # xy plane: value = ix + 5*iy
    # x = 0.1 -> u = 0.55 -> p = 0.55*3 + 0.5 = 2.15; y = -0.5 -> v = 0.25 -> p = 1.25.
    point = torch.tensor([[0.1, -0.5, 0.3]], dtype=torch.float64)
    out = hashgrid_encode_reference(point, table, cfg)
    # Bilinear of a linear function is exact: 2.15 + 5 * 1.25.
    assert out[0, 0].item() == pytest.approx(2.15 + 5 * 1.25, abs=1e-12)
    assert out[0, 1:].abs().max().item() == 0.0


def test_hashed_level_reads_hashed_rows() -> None:
    cfg = _single_level_cfg(40, 6)  # 41^2 vertices > 64 rows: hashed
    layout = level_layout(cfg)
    assert layout.dense == (False,) and layout.total_rows == 64
    table = torch.randn(3, 64, 1, dtype=torch.float64)
    # Choose a point exactly on vertex (7, 11): u*(39) + 0.5 = 7 -> u = 6.5/39.
    u, v = 6.5 / 39, 10.5 / 39
    point = torch.tensor([[2 * u - 1, 2 * v - 1, 0.0]], dtype=torch.float64)
    out = hashgrid_encode_reference(point, table, cfg)
    row = (7 ^ ((11 * HASH_PRIME_Y) % 2**32)) % 64
    assert out[0, 0].item() == pytest.approx(table[0, row, 0].item(), abs=1e-9)


def test_hash_index_equals_uint32_xor() -> None:
    ix = torch.tensor([0, 5, 123456, 2**20])
    iy = torch.tensor([3, 999, 77, 2**20 - 1])
    got = corner_indices(ix, iy, resolution=10**6, size=1 << 14, dense=False)
    want = [(int(a) ^ ((int(b) * 2654435761) & 0xFFFFFFFF)) % (1 << 14) for a, b in zip(ix, iy)]
    assert got.tolist() == want


def test_dense_and_hashed_agree_when_no_collisions() -> None:
    """With a table large enough the same level can be addressed densely or via the hash; filling
    the hashed table with the dense values at the hashed rows must give identical features."""
    dense_cfg = _single_level_cfg(6, 10)
    hashed_cfg = _single_level_cfg(6, 5)  # 49 vertices > 32 rows -> hashed
    torch.manual_seed(0)
    dense_table = torch.zeros(3, level_layout(dense_cfg).total_rows, 1, dtype=torch.float64)
    hashed_table = torch.randn(3, 32, 1, dtype=torch.float64)
    iy, ix = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    rows_h = corner_indices(ix.flatten(), iy.flatten(), 6, 32, dense=False)
    rows_d = corner_indices(ix.flatten(), iy.flatten(), 6, 0, dense=True)
    # Each dense vertex holds the value its hashed row holds, so both addressings must agree.
    dense_table[:, rows_d, :] = hashed_table[:, rows_h, :]
    points = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    a = hashgrid_encode_reference(points, dense_table, dense_cfg)
    b = hashgrid_encode_reference(points, hashed_table, hashed_cfg)
    assert torch.allclose(a, b, atol=1e-12)


def test_gradients_match_finite_differences_float64() -> None:
    cfg = HashGridConfig(num_levels=3, features_per_level=2, log2_table_size=6, base_resolution=4,
                         finest_resolution=12)  # mixes dense and hashed levels
    torch.manual_seed(1)
    table = torch.randn(3, level_layout(cfg).total_rows, 2, dtype=torch.float64, requires_grad=True)
    # Keep points away from cell borders so the finite difference in x stays inside one cell.
    points = (torch.rand(5, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: hashgrid_encode_reference(p, t, cfg), (points, table),
                                    eps=1e-7, atol=1e-5, fast_mode=True)


def test_sh_basis_is_orthonormal_on_the_sphere() -> None:
    # Gauss-Legendre in cos(theta) x uniform in phi integrates degree <= 6 products exactly.
    x, w = np.polynomial.legendre.leggauss(12)
    phi = torch.arange(24, dtype=torch.float64) * (2 * math.pi / 24)
    cos_t = torch.tensor(x)
    sin_t = torch.sqrt(1 - cos_t**2)
    dirs = torch.stack([(sin_t[:, None] * torch.cos(phi)), (sin_t[:, None] * torch.sin(phi)),
                        cos_t[:, None].expand(-1, 24)], dim=-1).reshape(-1, 3)
    quad = (torch.tensor(w)[:, None] * (2 * math.pi / 24)).expand(-1, 24).reshape(-1)
    basis = sh_encode(dirs, degree=4)
    assert basis.shape == (dirs.shape[0], 16)
    gram = basis.T @ (quad[:, None] * basis)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=1e-10)
