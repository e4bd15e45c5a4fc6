"""Fused lattice marching for inference (Triton, CUDA only).

The torch marcher in engine.py materialises every lattice point of every ray ([R, K] points, cells,
flags: ~20 bytes x 130 points per ray, several passes). This kernel walks each ray's lattice in
registers, tests the occupancy bitmap and writes at most ``max_samples`` depths per ray: one read of
the bitmap per lattice point and one small write. Same lattice (t = near + k dt), same cell rule
(floor((p - box_min) / cell), inside test with <=) as ``OccupancyGrid.is_occupied``; only float
contraction (FMA) may move a point that sits exactly on a cell face, so results agree with the torch
path up to such rare boundary samples (tests_gpu/test_render_engine_gpu.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_RAYS = 128


@triton.jit
def _march_kernel(origins_ptr, dirs_ptr, near_ptr, far_ptr, k0_ptr, occ_ptr, t_out_ptr, count_ptr, k_last_ptr,
                  n_rays, n_steps, dt, box_lo_x, box_lo_y, box_lo_z, box_hi_x, box_hi_y, box_hi_z,
                  inv_cell_x, inv_cell_y, inv_cell_z, RES: tl.constexpr, MAX_SAMPLES: tl.constexpr,
                  BLOCK: tl.constexpr):
    rays = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rays < n_rays
    ox = tl.load(origins_ptr + rays * 3 + 0, mask=live, other=0.0)
    oy = tl.load(origins_ptr + rays * 3 + 1, mask=live, other=0.0)
    oz = tl.load(origins_ptr + rays * 3 + 2, mask=live, other=0.0)
    dx = tl.load(dirs_ptr + rays * 3 + 0, mask=live, other=0.0)
    dy = tl.load(dirs_ptr + rays * 3 + 1, mask=live, other=0.0)
    dz = tl.load(dirs_ptr + rays * 3 + 2, mask=live, other=0.0)
    near = tl.load(near_ptr + rays, mask=live, other=0.0)
    far = tl.load(far_ptr + rays, mask=live, other=0.0)
    k0 = tl.load(k0_ptr + rays, mask=live, other=0)
    count = tl.zeros((BLOCK,), tl.int32)
    k_last = tl.zeros((BLOCK,), tl.int32) - 1
    for step in range(0, n_steps):
        k = (k0 + step).to(tl.float32)
        t = near + dt * k
        px = ox + t * dx
        py = oy + t * dy
        pz = oz + t * dz
        inside = ((px >= box_lo_x) & (px <= box_hi_x) & (py >= box_lo_y) & (py <= box_hi_y)
                  & (pz >= box_lo_z) & (pz <= box_hi_z))
        cx = tl.minimum(tl.maximum(tl.floor((px - box_lo_x) * inv_cell_x), 0.0), RES - 1.0).to(tl.int32)
        cy = tl.minimum(tl.maximum(tl.floor((py - box_lo_y) * inv_cell_y), 0.0), RES - 1.0).to(tl.int32)
        cz = tl.minimum(tl.maximum(tl.floor((pz - box_lo_z) * inv_cell_z), 0.0), RES - 1.0).to(tl.int32)
        want = live & (t < far) & inside & (count < MAX_SAMPLES)
        occ = tl.load(occ_ptr + (cx * RES + cy) * RES + cz, mask=want, other=0)
        take = want & (occ != 0)
        tl.store(t_out_ptr + rays * MAX_SAMPLES + count, t, mask=take)
        count += take.to(tl.int32)
        k_last = tl.where(take, k0 + step, k_last)
    tl.store(count_ptr + rays, count, mask=live)
    tl.store(k_last_ptr + rays, k_last, mask=live)


def march_fused(origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
                k_start: torch.Tensor, occupied_u8: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor,
                cell: torch.Tensor, dt: float, n_steps: int, max_samples: int, resolution: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (t [R, max_samples] (valid where column < count), count [R] int32, lattice index of the last
    sample taken [R] int32, -1 where none: the next round of marching starts after it)."""
    n = origins.shape[0]
    t_out = torch.empty(n, max_samples, device=origins.device, dtype=torch.float32)
    count = torch.empty(n, device=origins.device, dtype=torch.int32)
    k_last = torch.empty(n, device=origins.device, dtype=torch.int32)
    if n == 0:
        return t_out, count, k_last
    lo = [float(v) for v in box_min.tolist()]
    hi = [float(v) for v in box_max.tolist()]
    inv = [1.0 / float(v) for v in cell.tolist()]
    grid = (triton.cdiv(n, BLOCK_RAYS),)
    _march_kernel[grid](origins.contiguous(), dirs.contiguous(), near.contiguous(), far.contiguous(),
                        k_start.to(torch.int32).contiguous(), occupied_u8, t_out, count, k_last, n, n_steps, dt,
                        *lo, *hi, *inv, RES=resolution, MAX_SAMPLES=max_samples,
                        BLOCK=BLOCK_RAYS)
    return t_out, count, k_last
