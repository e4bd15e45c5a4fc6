"""Ray marching + compositing on an analytic sphere; packed compositing vs a per-ray loop."""

from __future__ import annotations

import math

import torch

from synctalk.nerf.render.composite import composite_packed_reference, render_inference
from synctalk.nerf.render.occupancy import OccupancyConfig, OccupancyGrid
from synctalk.nerf.render.raymarch import DEFAULT_DT, march_rays, ray_aabb

RADIUS = 0.4
CENTER = torch.tensor([0.0, 0.0, 0.0])


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    return torch.where((points - CENTER).norm(dim=-1) < RADIUS, 200.0, 0.0)


def orthographic_rays(n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays along -z from z = 2 over a [-0.6, 0.6]^2 grid, plus the true hit depth (nan = miss)."""
    xs = torch.linspace(-0.6, 0.6, n)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    origins = torch.stack([gx.flatten(), gy.flatten(), torch.full((n * n,), 2.0)], -1)
    dirs = torch.tensor([0.0, 0.0, -1.0]).expand(n * n, 3).contiguous()
    r2 = gx.flatten() ** 2 + gy.flatten() ** 2
    depth = 2.0 - torch.sqrt((RADIUS**2 - r2).clamp_min(0))
    depth[r2 >= RADIUS**2] = float("nan")
    return origins, dirs, depth


def make_grid(resolution: int = 32) -> OccupancyGrid:
    grid = OccupancyGrid(OccupancyConfig(resolution=resolution, density_thresh=10.0, dilate=True))
    grid.update(sphere_density, generator=torch.Generator().manual_seed(0))
    return grid


def test_ray_aabb_slab() -> None:
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far, hit = ray_aabb(origins, dirs, (-1, -0.5, -1, 1, 0.5, 1))
    assert hit.tolist() == [True, False]
    assert abs(near[0].item() - 2.0) < 1e-6 and abs(far[0].item() - 4.0) < 1e-6


def test_occupancy_grid_marks_the_sphere() -> None:
    grid = make_grid()
    assert grid.is_occupied(torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.1]])).all()
    assert not grid.is_occupied(torch.tensor([[0.9, 0.9, 0.9], [-0.8, 0.0, 0.0]])).any()
    # Occupied volume ~ sphere volume (dilated by one 1/16 cell): between 1x and 3x of 4/3 pi r^3.
    frac = grid.occupied.float().mean().item() * 8.0
    assert 4 / 3 * math.pi * RADIUS**3 < frac < 3 * 4 / 3 * math.pi * RADIUS**3


def test_marching_skips_empty_space_and_caps_samples() -> None:
    origins, dirs, _ = orthographic_rays(24)
    grid = make_grid()
    samples = march_rays(origins, dirs, grid, aabb=(-1, -1, -1, 1, 1, 1), max_samples=16)
    counts = torch.bincount(samples.ray_indices, minlength=origins.shape[0])
    assert counts.max().item() <= 16
    assert grid.is_occupied(samples.positions).all()
    # Samples of one ray are in depth order and on the dt lattice from that ray's near point.
    same_ray = samples.ray_indices[1:] == samples.ray_indices[:-1]
    assert (samples.t[1:][same_ray] > samples.t[:-1][same_ray]).all()
    near, _, _ = ray_aabb(origins, dirs, (-1, -1, -1, 1, 1, 1))
    steps = (samples.t - near[samples.ray_indices]) / DEFAULT_DT
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def test_sphere_silhouette_and_depth() -> None:
    origins, dirs, true_depth = orthographic_rays(40)
    grid = make_grid()
    samples = march_rays(origins, dirs, grid, aabb=(-1, -1, -1, 1, 1, 1), max_samples=16)
    sigma = sphere_density(samples.positions)
    values = torch.cat([torch.ones(samples.num_samples, 3), samples.t[:, None]], dim=1)
    _, opacity, out = composite_packed_reference(sigma, samples.deltas, values, samples.ray_indices,
                                                 origins.shape[0])
    mask = opacity > 0.5
    truth = ~torch.isnan(true_depth)
    iou = (mask & truth).sum().item() / (mask | truth).sum().item()
    assert iou > 0.9
    depth = out[:, 3] / opacity.clamp_min(1e-6)
    both = mask & truth
    assert ((depth[both] - true_depth[both]).abs() < DEFAULT_DT * 1.5).float().mean() > 0.95
    # The early-terminating inference loop renders the same image (white background).
    result = render_inference(origins, dirs, lambda p, d: (sphere_density(p), torch.zeros(p.shape[0], 3)),
                              grid, aabb=(-1, -1, -1, 1, 1, 1), max_samples=16, background=1.0)
    assert torch.allclose(result.opacity, opacity, atol=2e-4)
    assert torch.allclose(result.depth, out[:, 3], atol=1e-3)
    assert torch.allclose(result.color[:, 0], 1.0 - opacity, atol=2e-4)


def test_packed_composite_matches_per_ray_loop_and_terminates() -> None:
    torch.manual_seed(3)
    counts = torch.tensor([0, 1, 5, 16, 3])
    ray_indices = torch.repeat_interleave(torch.arange(5), counts)
    sig = torch.rand(ray_indices.numel(), dtype=torch.float64) * 400
    deltas = torch.full_like(sig, 0.03)
    values = torch.rand(ray_indices.numel(), 2, dtype=torch.float64)
    weights, opacity, out = composite_packed_reference(sig, deltas, values, ray_indices, 5)
    start = 0
    for ray, c in enumerate(counts.tolist()):
        trans, acc, acc_w = 1.0, torch.zeros(2, dtype=torch.float64), 0.0
        for i in range(start, start + c):
            if trans < 1e-4:
                assert weights[i].item() == 0.0
                continue
            a = 1 - math.exp(-sig[i].item() * 0.03)
            assert abs(weights[i].item() - a * trans) < 1e-12
            acc, acc_w, trans = acc + a * trans * values[i], acc_w + a * trans, trans * (1 - a)
        assert abs(opacity[ray].item() - acc_w) < 1e-12 and torch.allclose(out[ray], acc)
        start += c


def test_packed_composite_gradients_float64() -> None:
    torch.manual_seed(4)
    ray_indices = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 6, 1, 4]))
    sig = (torch.rand(14, dtype=torch.float64) * 20).requires_grad_()
    values = torch.rand(14, 3, dtype=torch.float64, requires_grad=True)
    deltas = torch.full((14,), 0.05, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s, v: composite_packed_reference(s, deltas, v, ray_indices, 4)[1:], (sig, values))
