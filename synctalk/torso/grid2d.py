"""A 2-D multiresolution hash grid over image coordinates (the torso's colour/alpha encoder).

It reuses the head's grid conventions (``synctalk.nerf.encoding.hashgrid``: ``level_layout``, dense
coarse levels, XOR hashing of the finer ones) with a single plane. Two paths:

* ``encode_reference``: plain PyTorch, differentiable w.r.t. the table *and* the coordinates. Training
  needs the coordinate gradient because the deformation MLP moves the lookup point.
* ``encode_fused``: the head's Triton forward kernel run with one plane (inference only, no autograd).
"""

from __future__ import annotations

import torch
from torch import nn

from synctalk.nerf.encoding.hashgrid import (HashGridConfig, bilinear_level, fused_backend_enabled, level_layout,
                                             normalise_points)

# The original's "tiled" torso encoder: 16 levels x 2 features, base 16, finest 2048, 2^16 rows.
TORSO_GRID = HashGridConfig(num_levels=16, features_per_level=2, log2_table_size=16, base_resolution=16,
                            finest_resolution=2048, bound=1.0, init_scale=1e-4)


def encode_reference(xy: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """xy [N, 2] in [-bound, bound] (x right, y down), table [rows, F] -> [N, L*F] (level-major).

    Gathers use ``index_select`` on the flat table: its CPU backward is a serial index_add, so resumed
    CPU training stays bit-exact (advanced-indexing backward sums in thread order)."""
    layout = level_layout(cfg)
    unit = normalise_points(xy, cfg.bound)
    feats = [bilinear_level(unit, layout, level,
                            lambda rows, off=layout.offsets[level]: table.index_select(0, off + rows))
             for level in range(cfg.num_levels)]
    return torch.cat(feats, dim=-1)


def encode_fused(xy: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Same values as ``encode_reference`` through the head's Triton forward kernel with one plane
    (the kernel's plane 0 reads axes (0, 1) of [N, 3] points); no gradient."""
    import triton

    from synctalk.nerf.kernels.hashgrid_triton import BLOCK_POINTS, _hashgrid_fwd_kernel, _level_meta

    n = xy.shape[0]
    points = torch.zeros(n, 3, device=xy.device, dtype=torch.float32)
    points[:, :2] = xy
    flat = table.detach().float().contiguous()
    out = torch.empty(n, cfg.num_levels * cfg.features_per_level, device=xy.device, dtype=torch.float32)
    if n:
        _hashgrid_fwd_kernel[(triton.cdiv(n, BLOCK_POINTS),)](
            points, flat, out, _level_meta(cfg, xy.device), n, flat.shape[0], float(cfg.bound),
            NUM_PLANES=1, NUM_LEVELS=cfg.num_levels, FEAT=cfg.features_per_level, BLOCK=BLOCK_POINTS)
    return out


class HashGrid2D(nn.Module):
    """Learnable 2-D hash grid; ``forward(xy [N, 2]) -> [N, L*F]``."""

    def __init__(self, cfg: HashGridConfig = TORSO_GRID) -> None:
        super().__init__()
        self.cfg = cfg
        rows = level_layout(cfg).total_rows
        table = torch.empty(rows, cfg.features_per_level)
        nn.init.uniform_(table, -cfg.init_scale, cfg.init_scale)
        self.table = nn.Parameter(table)

    @property
    def output_dim(self) -> int:
        return self.cfg.num_levels * self.cfg.features_per_level

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (xy.requires_grad or self.table.requires_grad)
        if not needs_grad and fused_backend_enabled(xy):
            try:
                return encode_fused(xy, self.table, self.cfg)
            except (ImportError, AttributeError, TypeError):  # the head's kernel changed shape: stay correct
                pass
        return encode_reference(xy, self.table, self.cfg)
