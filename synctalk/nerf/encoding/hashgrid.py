"""Tri-plane multiresolution hash encoding (pure PyTorch reference + dispatch to fused kernels).

A 3-D point is projected onto the xy, yz and xz planes; each plane owns a 2-D multiresolution
grid (Instant-NGP style). Coarse levels whose vertex count fits the table are stored densely, finer
levels are hashed (XOR of the integer coordinates times the primes {1, 2654435761}, modulo the
table size). Each level returns the bilinear interpolation of its four corner features, and the
result is the concatenation plane-major: [xy levels..., yz levels..., xz levels...] -> P*L*F dims.

Grid convention (ours, documented in docs/nerf.md): level l has resolution R_l = ceil(base * s^l)
with s = (finest/base)^(1/(L-1)); a coordinate u in [0, 1] maps to p = u * (R_l - 1) + 0.5, so the
level has R_l + 1 vertices per axis (the half-cell offset of "align_corners=False").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

HASH_PRIME_Y = 2654435761
UINT32_MASK = 0xFFFFFFFF
# Axis pairs of the three planes, in the order the features are concatenated.
PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 2))


@dataclass(frozen=True)
class HashGridConfig:
    num_levels: int = 12
    features_per_level: int = 1
    log2_table_size: int = 14
    base_resolution: int = 64
    finest_resolution: int = 512
    bound: float = 1.0
    init_scale: float = 1e-4

    @property
    def table_size(self) -> int:
        return 1 << self.log2_table_size

    @property
    def output_dim(self) -> int:
        return len(PLANE_AXES) * self.num_levels * self.features_per_level


@dataclass(frozen=True)
class LevelLayout:
    """Where each level lives in the flat per-plane table, plus how it is indexed."""

    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]  # start row of each level; offsets[-1] is the total row count
    sizes: tuple[int, ...]
    dense: tuple[bool, ...]

    @property
    def total_rows(self) -> int:
        return self.offsets[-1]


def level_layout(cfg: HashGridConfig) -> LevelLayout:
    if cfg.num_levels < 1 or cfg.base_resolution < 2 or cfg.finest_resolution < cfg.base_resolution:
        raise ValueError(f"invalid hash grid config {cfg}")
    growth = (cfg.finest_resolution / cfg.base_resolution) ** (1.0 / max(cfg.num_levels - 1, 1))
    resolutions, offsets, sizes, dense = [], [0], [], []
    for level in range(cfg.num_levels):
        # The small epsilon keeps exact powers (e.g. 64 * 8 = 512) from rounding up by float noise.
        res = int(math.ceil(cfg.base_resolution * growth**level - 1e-6))
        vertices = (res + 1) ** 2
        is_dense = vertices <= cfg.table_size
        # Dense levels are padded to a multiple of 8 rows (as the original) so parameter counts match.
        size = min(cfg.table_size, (vertices + 7) // 8 * 8)
        resolutions.append(res)
        sizes.append(size)
        dense.append(is_dense)
        offsets.append(offsets[-1] + size)
    return LevelLayout(tuple(resolutions), tuple(offsets), tuple(sizes), tuple(dense))


def corner_indices(ix: torch.Tensor, iy: torch.Tensor, resolution: int, size: int, dense: bool) -> torch.Tensor:
    """Row (within the level) of integer vertex (ix, iy); int64 in, int64 out."""
    if dense:
        return ix + iy * (resolution + 1)
    hashed = ix ^ ((iy * HASH_PRIME_Y) & UINT32_MASK)  # uint32 wrap-around, emulated in int64
    return hashed % size


def normalise_points(points: torch.Tensor, bound: float) -> torch.Tensor:
    """Map [-bound, bound]^3 to [0, 1]^3; points outside are clamped onto the boundary."""
    return ((points + bound) / (2.0 * bound)).clamp(0.0, 1.0)


def bilinear_level(uv: torch.Tensor, layout: LevelLayout, level: int,
                   gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Bilinear interpolation of one 2-D grid level: uv [N, 2] in [0, 1] -> [N, F].

    ``gather(rows)`` returns the table rows of this level's cells (``rows`` indexes within the level),
    so the tri-plane head and the torso's single plane share the lookup and differ only in how they
    read their tables."""
    res, size = layout.resolutions[level], layout.sizes[level]
    pos = uv * (res - 1) + 0.5
    cell = torch.floor(pos)
    frac = pos - cell
    cell = cell.long()
    value = 0.0
    for dx in (0, 1):
        wx = frac[:, 0] if dx else 1.0 - frac[:, 0]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1.0 - frac[:, 1]
            rows = corner_indices(cell[:, 0] + dx, cell[:, 1] + dy, res, size, layout.dense[level])
            value = value + (wx * wy)[:, None] * gather(rows)
    return value


def hashgrid_encode_reference(points: torch.Tensor, embeddings: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Readable reference: points [N, 3] in [-bound, bound], embeddings [3, rows, F] -> [N, 3*L*F].

    Differentiable w.r.t. embeddings and points (through the bilinear weights)."""
    layout = level_layout(cfg)
    unit = normalise_points(points, cfg.bound)
    features = []
    for plane, (a, b) in enumerate(PLANE_AXES):
        uv = unit[:, [a, b]]
        for level in range(cfg.num_levels):
            off, size = layout.offsets[level], layout.sizes[level]
            level_table = embeddings[plane, off:off + size]
            features.append(bilinear_level(uv, layout, level, lambda rows, t=level_table: t[rows]))
    return torch.cat(features, dim=-1)


def fused_backend_enabled(points: torch.Tensor) -> bool:
    """Fused kernels run on CUDA unless SYNCTALK_NERF_BACKEND=reference; the CPU uses the reference."""
    choice = os.environ.get("SYNCTALK_NERF_BACKEND", "auto")
    if choice == "reference" or not points.is_cuda:
        return False
    from synctalk.nerf.kernels import triton_available

    return triton_available()


class TriPlaneHashGrid(nn.Module):
    """Learnable tri-plane hash grid; ``forward(points [N,3]) -> [N, output_dim]``."""

    def __init__(self, cfg: HashGridConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or HashGridConfig()
        self.layout = level_layout(self.cfg)
        rows = self.layout.total_rows
        table = torch.empty(len(PLANE_AXES), rows, self.cfg.features_per_level)
        nn.init.uniform_(table, -self.cfg.init_scale, self.cfg.init_scale)
        self.embeddings = nn.Parameter(table)

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        # The fused kernel also returns dL/dpoints when the points need it (camera-pose refinement).
        if fused_backend_enabled(points):
            from synctalk.nerf.kernels.hashgrid_triton import hashgrid_encode_fused

            return hashgrid_encode_fused(points, self.embeddings, self.cfg)
        return hashgrid_encode_reference(points, self.embeddings, self.cfg)
