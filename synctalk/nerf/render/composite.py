"""Volume compositing: packed training variant (autograd) and an early-terminating inference loop.

For samples i of one ray (depth order) with density s_i and segment length d_i:
  alpha_i = 1 - exp(-s_i d_i),  T_i = exp(-sum_{j<i} s_j d_j),  w_i = T_i alpha_i.
A ray stops accumulating at the first sample whose incoming transmittance T_i is below
``min_transmittance`` (1e-4, as the original): that sample and all later ones get weight 0.
Outputs: per-sample weights, per-ray opacity sum(w) and per-ray sum(w * values) for any number of
value channels (colour, depth = t, the Face-Sync attention norms, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from synctalk.nerf.render.occupancy import OccupancyGrid
from synctalk.nerf.render.raymarch import DEFAULT_DT, HEAD_AABB, _next_sample_t, ray_aabb

MIN_TRANSMITTANCE = 1e-4


def _rank_within_ray(ray_indices: torch.Tensor, num_rays: int) -> tuple[torch.Tensor, int]:
    counts = torch.bincount(ray_indices, minlength=num_rays)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(ray_indices.shape[0], device=ray_indices.device) - first[ray_indices]
    return rank, int(counts.max()) if counts.numel() else 0


def composite_packed_reference(sigmas: torch.Tensor, deltas: torch.Tensor, values: torch.Tensor,
                               ray_indices: torch.Tensor, num_rays: int,
                               min_transmittance: float = MIN_TRANSMITTANCE
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: sigmas [S], deltas [S], values [S, C], ray_indices [S] sorted -> (w [S], opacity [R], out [R, C]).

    Samples are scattered into a padded [R, K] layout so the per-ray exclusive cumsum is exact (no
    global-cumsum cancellation); K is the largest per-ray sample count (<= max_steps)."""
    num_samples = sigmas.shape[0]
    out = values.new_zeros(num_rays, values.shape[1])
    if num_samples == 0:
        return sigmas.new_zeros(0), sigmas.new_zeros(num_rays), out
    rank, k = _rank_within_ray(ray_indices, num_rays)
    optical = sigmas.new_zeros(num_rays, k).index_put((ray_indices, rank), sigmas * deltas)
    exclusive = torch.cumsum(optical, dim=1) - optical
    transmittance = torch.exp(-exclusive)[ray_indices, rank]
    alpha = 1.0 - torch.exp(-sigmas * deltas)
    keep = (transmittance >= min_transmittance).detach()
    weights = alpha * transmittance * keep
    opacity = sigmas.new_zeros(num_rays).index_add(0, ray_indices, weights)
    out = out.index_add(0, ray_indices, weights[:, None] * values)
    return weights, opacity, out


def fused_composite_enabled(sigmas: torch.Tensor) -> bool:
    if os.environ.get("SYNCTALK_NERF_BACKEND", "auto") == "reference" or not sigmas.is_cuda:
        return False
    from synctalk.nerf.kernels import triton_available

    return triton_available()


def composite_packed(sigmas: torch.Tensor, deltas: torch.Tensor, values: torch.Tensor,
                     ray_indices: torch.Tensor, num_rays: int,
                     min_transmittance: float = MIN_TRANSMITTANCE
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatching entry point. On CUDA the fused kernel returns weights without a gradient path
    (gradients flow through opacity and the composited values, which is all the losses use)."""
    if fused_composite_enabled(sigmas):
        from synctalk.nerf.kernels.composite_triton import composite_packed_fused

        return composite_packed_fused(sigmas, deltas, values, ray_indices, num_rays, min_transmittance)
    return composite_packed_reference(sigmas, deltas, values, ray_indices, num_rays, min_transmittance)


@dataclass
class RenderResult:
    color: torch.Tensor    # [R, 3] composited over ``background``
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor    # [R] expected depth sum(w t) (0 where nothing was hit)
    steps: torch.Tensor    # [R] samples evaluated per ray


FieldFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def render_inference(origins: torch.Tensor, dirs: torch.Tensor, field_fn: FieldFn,
                     grid: OccupancyGrid | None, aabb: tuple[float, ...] = HEAD_AABB, dt: float = DEFAULT_DT,
                     max_samples: int = 16, min_near: float = 0.05, background: torch.Tensor | float = 1.0,
                     min_transmittance: float = MIN_TRANSMITTANCE) -> RenderResult:
    """March all rays in lock-step, one sample per alive ray per iteration, and drop rays as soon as
    their transmittance falls below ``min_transmittance`` so the field is never evaluated behind an
    opaque surface. ``field_fn(points [M,3], dirs [M,3]) -> (sigma [M], rgb [M,3])``."""
    num_rays = origins.shape[0]
    near, far, hit = ray_aabb(origins, dirs, aabb, min_near)
    t = near.clone()
    transmittance = torch.ones(num_rays, device=origins.device, dtype=origins.dtype)
    color = origins.new_zeros(num_rays, 3)
    depth = origins.new_zeros(num_rays)
    steps = torch.zeros(num_rays, dtype=torch.long, device=origins.device)
    alive = hit & (t < far)
    max_iters = int(torch.ceil((far - near).clamp_min(0).max() / dt)) + 2 if num_rays else 0
    for _ in range(max_iters):
        ids = alive.nonzero().squeeze(1)
        if ids.numel() == 0:
            break
        occupied, t_skip = _next_sample_t(origins[ids], dirs[ids], t[ids], dt, grid)
        sample_ids = ids[occupied]
        if sample_ids.numel():
            ts = t[sample_ids]
            sigma, rgb = field_fn(origins[sample_ids] + ts[:, None] * dirs[sample_ids], dirs[sample_ids])
            alpha = 1.0 - torch.exp(-sigma.reshape(-1) * dt)
            weight = alpha * transmittance[sample_ids]
            color[sample_ids] += weight[:, None] * rgb
            depth[sample_ids] += weight * ts
            transmittance[sample_ids] *= 1.0 - alpha
            steps[sample_ids] += 1
        t[ids] = torch.where(occupied, t[ids] + dt, t_skip)
        alive[ids] = ((t[ids] < far[ids]) & (steps[ids] < max_samples)
                      & (transmittance[ids] >= min_transmittance))
    opacity = 1.0 - transmittance
    bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
    return RenderResult(color=color + transmittance[:, None] * bg, opacity=opacity, depth=depth, steps=steps)
