"""Occupancy grid: a coarse density cache that lets the ray marcher skip empty space.

The grid covers an axis-aligned box with ``resolution`` cells per axis. ``update`` samples one
jittered point per cell, evaluates the density, and keeps max(old * decay, new) (the original's
EMA, which never lets a cell decay faster than the current evidence). Cells are occupied when
their density exceeds min(mean density, density_thresh); optional 3x3x3 dilation grows the
occupied set by one cell so thin structure is not clipped between updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synctalk.log import get_logger, progress

log = get_logger("nerf.occupancy")

DensityFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OccupancyConfig:
    resolution: int = 128
    box_min: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    box_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    decay: float = 0.95
    density_thresh: float = 10.0
    dilate: bool = False
    chunk: int = 1 << 18


class OccupancyGrid:
    """Density grid [R, R, R] (index order x, y, z) plus its boolean occupancy mask."""

    def __init__(self, cfg: OccupancyConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg or OccupancyConfig()
        r = self.cfg.resolution
        self.box_min = torch.tensor(self.cfg.box_min, dtype=torch.float32, device=device)
        self.box_max = torch.tensor(self.cfg.box_max, dtype=torch.float32, device=device)
        self.density = torch.zeros(r, r, r, device=device)
        # Until the first update every cell counts as occupied, so early training sees the whole box.
        self.occupied = torch.ones(r, r, r, dtype=torch.bool, device=device)

    @property
    def cell_size(self) -> torch.Tensor:
        return (self.box_max - self.box_min) / self.cfg.resolution

    def cell_of(self, points: torch.Tensor) -> torch.Tensor:
        """Integer cell coordinates [N, 3] of points (clamped into the grid)."""
        rel = (points - self.box_min) / self.cell_size
        return rel.floor().long().clamp(0, self.cfg.resolution - 1)

    def inside(self, points: torch.Tensor) -> torch.Tensor:
        return ((points >= self.box_min) & (points <= self.box_max)).all(dim=-1)

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """Boolean [N]: the point lies in the box and in an occupied cell."""
        c = self.cell_of(points)
        return self.occupied[c[:, 0], c[:, 1], c[:, 2]] & self.inside(points)

    def threshold(self) -> float:
        return min(float(self.density.mean()), self.cfg.density_thresh)

    @torch.no_grad()
    def update(self, density_fn: DensityFn, generator: torch.Generator | None = None) -> float:
        """One EMA update from ``density_fn(points [M,3]) -> sigma [M]``; returns the occupied fraction."""
        r = self.cfg.resolution
        device = self.density.device
        flat = torch.arange(r**3, device=device)
        fresh = torch.empty(r**3, device=device)
        chunks = range(0, r**3, self.cfg.chunk)
        for start in progress(chunks, desc="occupancy update", total=len(chunks), unit="chunk"):
            idx = flat[start:start + self.cfg.chunk]
            cell = torch.stack((idx // (r * r), (idx // r) % r, idx % r), dim=-1)
            jitter = torch.rand(idx.shape[0], 3, device=device, generator=generator)
            points = self.box_min + (cell.float() + jitter) * self.cell_size
            fresh[start:start + idx.shape[0]] = density_fn(points).reshape(-1).float()
        self.density = torch.maximum(self.density * self.cfg.decay, fresh.view(r, r, r))
        occupied = self.density > self.threshold()
        if self.cfg.dilate:
            occupied = F.max_pool3d(occupied[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        self.occupied = occupied
        fraction = float(occupied.float().mean())
        log.debug("occupancy update: threshold %.4g, occupied %.2f%%", self.threshold(), 100 * fraction)
        return fraction

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"density": self.density, "occupied": self.occupied}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.density = state["density"].to(self.density)
        self.occupied = state["occupied"].to(self.occupied.device).bool()
