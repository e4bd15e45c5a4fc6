"""Ray-AABB intersection and fixed-step ray marching that skips empty occupancy cells.

As in the original renderer (one cascade, max_steps 16) the step is fixed: dt = 2*sqrt(3)/max_steps
rounded as the original ("dt ~= 2*sqrt(3)/128" for its grid), and at most ``max_samples`` samples are
taken per ray in occupied space. When a sample would fall in an empty cell the marcher jumps in whole
steps of dt until it has left that cell, so samples stay on the ray's dt lattice.
Samples are returned *packed*: one row per sample, sorted by ray then depth, with the owning ray id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synctalk.nerf.render.occupancy import OccupancyGrid

HEAD_AABB = (-1.0, -0.5, -1.0, 1.0, 0.5, 1.0)
DEFAULT_DT = 2.0 * math.sqrt(3.0) / 128.0
FAR_AWAY = 1e10


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, aabb: tuple[float, ...] | torch.Tensor,
             min_near: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test. Returns (near [R], far [R], hit [R]); near is at least ``min_near``."""
    box = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device)
    # Replace zero components so 1/d is a large finite number and the slab test stays NaN-free.
    safe = torch.where(dirs.abs() < 1e-15, torch.full_like(dirs, 1e-15), dirs)
    inv = 1.0 / safe
    t0 = (box[:3] - origins) * inv
    t1 = (box[3:] - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    return near, far, hit


@dataclass
class PackedSamples:
    positions: torch.Tensor    # [S, 3]
    directions: torch.Tensor   # [S, 3]
    t: torch.Tensor            # [S] depth along the ray
    deltas: torch.Tensor       # [S] segment length used for alpha
    ray_indices: torch.Tensor  # [S] long, non-decreasing
    num_rays: int

    @property
    def num_samples(self) -> int:
        return int(self.t.shape[0])


def _next_sample_t(origins: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor, dt: float,
                   grid: OccupancyGrid | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For rays at depth t: whether t is in an occupied cell, and the depth to try next if not."""
    points = origins + t[:, None] * dirs
    if grid is None:
        return torch.ones_like(t, dtype=torch.bool), t + dt
    occupied = grid.is_occupied(points)
    # Distance to the exit of the current cell along the ray, then whole dt steps past it.
    cell = grid.cell_of(points).to(points.dtype)
    size = grid.cell_size.to(points.dtype)
    lower = grid.box_min + cell * size
    boundary = torch.where(dirs > 0, lower + size, lower)
    safe = torch.where(dirs.abs() < 1e-15, torch.full_like(dirs, 1e-15), dirs)
    t_exit = ((boundary - points) / safe).clamp_min(0).where(dirs.abs() >= 1e-15,
                                                              torch.full_like(dirs, FAR_AWAY)).amin(dim=-1)
    steps = torch.ceil(t_exit / dt).clamp_min(1.0)
    return occupied, t + steps * dt


@torch.no_grad()
def march_rays(origins: torch.Tensor, dirs: torch.Tensor, grid: OccupancyGrid | None,
               aabb: tuple[float, ...] = HEAD_AABB, dt: float = DEFAULT_DT, max_samples: int = 16,
               min_near: float = 0.05, jitter: bool = False,
               generator: torch.Generator | None = None) -> PackedSamples:
    """Sample rays on a fixed dt lattice inside the AABB, skipping empty cells, <= max_samples each.

    ``jitter`` offsets each ray's lattice by U(0, dt) (training); inference uses the plain lattice."""
    num_rays = origins.shape[0]
    near, far, hit = ray_aabb(origins, dirs, aabb, min_near)
    t = near.clone()
    if jitter:
        t = t + dt * torch.rand(num_rays, device=origins.device, generator=generator, dtype=origins.dtype)
    counts = torch.zeros(num_rays, dtype=torch.long, device=origins.device)
    alive = hit & (t < far)
    found_t: list[torch.Tensor] = []
    found_ray: list[torch.Tensor] = []
    # Every iteration advances each alive ray by >= dt, so this bound always terminates the loop.
    max_iters = int(math.ceil(float((far - near).clamp_min(0).max()) / dt)) + 2 if num_rays else 0
    for _ in range(max_iters):
        ids = alive.nonzero().squeeze(1)
        if ids.numel() == 0:
            break
        occupied, t_next = _next_sample_t(origins[ids], dirs[ids], t[ids], dt, grid)
        taken = ids[occupied]
        found_t.append(t[taken])
        found_ray.append(taken)
        counts[taken] += 1
        t[ids] = torch.where(occupied, t[ids] + dt, t_next)
        alive[ids] = (t[ids] < far[ids]) & (counts[ids] < max_samples)
    if found_t:
        t_all, ray_all = torch.cat(found_t), torch.cat(found_ray)
        # Each ray's samples were found in increasing t, so a stable sort by ray keeps depth order.
        order = torch.argsort(ray_all, stable=True)
        t_all, ray_all = t_all[order], ray_all[order]
    else:
        t_all = origins.new_zeros(0)
        ray_all = torch.zeros(0, dtype=torch.long, device=origins.device)
    positions = origins[ray_all] + t_all[:, None] * dirs[ray_all]
    return PackedSamples(positions=positions, directions=dirs[ray_all], t=t_all,
                         deltas=torch.full_like(t_all, dt), ray_indices=ray_all, num_rays=num_rays)


def lattice_length(aabb: tuple[float, ...], dt: float) -> int:
    """Candidate samples per ray that cover the AABB's diagonal (a fixed size: no host sync)."""
    lo, hi = aabb[:3], aabb[3:]
    diagonal = math.sqrt(sum((b - a) ** 2 for a, b in zip(lo, hi)))
    return int(math.ceil(diagonal / dt)) + 2


@torch.no_grad()
def march_rays_lattice(origins: torch.Tensor, dirs: torch.Tensor, grid: OccupancyGrid | None,
                       aabb: tuple[float, ...] = HEAD_AABB, dt: float = DEFAULT_DT, max_samples: int = 16,
                       min_near: float = 0.05, jitter: torch.Tensor | None = None) -> PackedSamples:
    """Same samples as ``march_rays`` without its per-step loop: every lattice point t = near + k dt
    inside the box is tested against the occupancy grid at once ([R, K] with K fixed by the AABB
    diagonal) and the first ``max_samples`` occupied ones per ray are kept. Skipping an empty cell in
    whole dt steps (``march_rays``) lands on exactly these lattice points, so both give the same set
    up to float rounding at cell faces. One host sync (the final nonzero) instead of one per step,
    which is what makes training fast on a GPU. ``jitter`` [R] in [0, 1) offsets each ray's lattice."""
    num_rays = origins.shape[0]
    near, far, hit = ray_aabb(origins, dirs, aabb, min_near)
    t0 = near if jitter is None else near + dt * jitter.to(near.dtype)
    k = lattice_length(aabb, dt)
    ts = t0[:, None] + dt * torch.arange(k, device=origins.device, dtype=origins.dtype)[None, :]
    valid = hit[:, None] & (ts < far[:, None])
    if grid is not None:
        points = origins[:, None, :] + ts[..., None] * dirs[:, None, :]
        valid &= grid.is_occupied(points.reshape(-1, 3)).reshape(num_rays, k)
    valid &= torch.cumsum(valid, dim=1, dtype=torch.int32) <= max_samples
    # nonzero walks row-major: samples come out sorted by ray, then by depth.
    ray_all, k_all = valid.nonzero(as_tuple=True)
    t_all = ts[ray_all, k_all]
    positions = origins[ray_all] + t_all[:, None] * dirs[ray_all]
    return PackedSamples(positions=positions, directions=dirs[ray_all], t=t_all,
                         deltas=torch.full_like(t_all, dt), ray_indices=ray_all, num_rays=num_rays)
