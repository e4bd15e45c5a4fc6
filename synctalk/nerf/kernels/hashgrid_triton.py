"""Fused tri-plane hash-grid encode: forward (gather + bilinear) and backward (atomic scatter).

One program handles BLOCK points and loops over all planes x levels, so each point is read once
and its P*L*F output row is written by the same program (adjacent columns share cache lines).
Level constants (resolution, row offset, table size, dense flag) live in a small int32 tensor.
Backward accumulates dL/dembeddings with float32 atomics. dL/dpoints (needed only when camera poses
are refined, ``synctalk.nerf.pose_refine``) comes from a second kernel that runs only when asked:
the derivative of each bilinear lookup along its plane's two axes, summed over planes and levels,
zero where the point was clamped onto the grid's boundary (as the reference's clamp).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from synctalk.nerf.encoding.hashgrid import HASH_PRIME_Y, PLANE_AXES, HashGridConfig, level_layout

BLOCK_POINTS = 128


@triton.jit
def _corner_row(ix, iy, res, size, dense):
    dense_row = (ix + iy * (res + 1)).to(tl.int64)
    hashed = ix.to(tl.int64) ^ ((iy.to(tl.int64) * 2654435761) & 0xFFFFFFFF)
    return tl.where(dense != 0, dense_row, hashed % size)


@triton.jit
def _plane_uv(points_ptr, offs, mask, plane: tl.constexpr, bound):
    # Axis pairs (0,1), (1,2), (0,2), matching PLANE_AXES.
    a: tl.constexpr = 1 if plane == 1 else 0
    b: tl.constexpr = 1 if plane == 0 else 2
    pa = tl.load(points_ptr + offs * 3 + a, mask=mask, other=0.0)
    pb = tl.load(points_ptr + offs * 3 + b, mask=mask, other=0.0)
    u = tl.minimum(tl.maximum((pa + bound) / (2.0 * bound), 0.0), 1.0)
    v = tl.minimum(tl.maximum((pb + bound) / (2.0 * bound), 0.0), 1.0)
    return u, v


@triton.jit
def _plane_uv_unclamped(points_ptr, offs, mask, plane: tl.constexpr, bound):
    # _plane_uv before its clamp (the point-gradient kernel needs both).
    a: tl.constexpr = 1 if plane == 1 else 0
    b: tl.constexpr = 1 if plane == 0 else 2
    pa = tl.load(points_ptr + offs * 3 + a, mask=mask, other=0.0)
    pb = tl.load(points_ptr + offs * 3 + b, mask=mask, other=0.0)
    return (pa + bound) / (2.0 * bound), (pb + bound) / (2.0 * bound)


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _level_cell(meta_ptr, level: tl.constexpr, plane: tl.constexpr, rows_per_plane, u, v):
    """One level's bilinear cell at plane coordinates (u, v) in [0, 1], shared by all three kernels.

    Returns the table rows of the four corners (r00, r10, r01, r11: dense or hashed within the level,
    offset to the level's first row and the plane's block), their bilinear weights (w00, w10, w01, w11),
    the position inside the cell (fu, fv) and the level's scale d(cell coordinate)/du = res - 1."""
    res = tl.load(meta_ptr + level * 4 + 0)
    row0 = tl.load(meta_ptr + level * 4 + 1).to(tl.int64) + plane * rows_per_plane
    size = tl.load(meta_ptr + level * 4 + 2)
    dense = tl.load(meta_ptr + level * 4 + 3)
    scale = (res - 1).to(tl.float32)
    pu = u * scale + 0.5
    pv = v * scale + 0.5
    cu = tl.floor(pu)
    cv = tl.floor(pv)
    fu = pu - cu
    fv = pv - cv
    iu = cu.to(tl.int32)
    iv = cv.to(tl.int32)
    r00 = row0 + _corner_row(iu, iv, res, size, dense)
    r10 = row0 + _corner_row(iu + 1, iv, res, size, dense)
    r01 = row0 + _corner_row(iu, iv + 1, res, size, dense)
    r11 = row0 + _corner_row(iu + 1, iv + 1, res, size, dense)
    w00 = (1.0 - fu) * (1.0 - fv)
    w10 = fu * (1.0 - fv)
    w01 = (1.0 - fu) * fv
    w11 = fu * fv
    return r00, r10, r01, r11, w00, w10, w01, w11, fu, fv, scale


@triton.jit
def _hashgrid_fwd_kernel(points_ptr, emb_ptr, out_ptr, meta_ptr, n_points, rows_per_plane, bound,
                         NUM_PLANES: tl.constexpr, NUM_LEVELS: tl.constexpr, FEAT: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    out_dim: tl.constexpr = NUM_PLANES * NUM_LEVELS * FEAT
    for plane in tl.static_range(NUM_PLANES):
        u, v = _plane_uv(points_ptr, offs, mask, plane, bound)
        for level in tl.static_range(NUM_LEVELS):
            r00, r10, r01, r11, w00, w10, w01, w11, _, _, _ = _level_cell(
                meta_ptr, level, plane, rows_per_plane, u, v)
            for f in tl.static_range(FEAT):
                val = (w00 * tl.load(emb_ptr + r00 * FEAT + f, mask=mask, other=0.0)
                       + w10 * tl.load(emb_ptr + r10 * FEAT + f, mask=mask, other=0.0)
                       + w01 * tl.load(emb_ptr + r01 * FEAT + f, mask=mask, other=0.0)
                       + w11 * tl.load(emb_ptr + r11 * FEAT + f, mask=mask, other=0.0))
                col = (plane * NUM_LEVELS + level) * FEAT + f
                tl.store(out_ptr + offs.to(tl.int64) * out_dim + col, val, mask=mask)


@triton.jit
def _hashgrid_bwd_kernel(points_ptr, grad_out_ptr, grad_emb_ptr, meta_ptr, n_points, rows_per_plane, bound,
                         NUM_PLANES: tl.constexpr, NUM_LEVELS: tl.constexpr, FEAT: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    out_dim: tl.constexpr = NUM_PLANES * NUM_LEVELS * FEAT
    for plane in tl.static_range(NUM_PLANES):
        u, v = _plane_uv(points_ptr, offs, mask, plane, bound)
        for level in tl.static_range(NUM_LEVELS):
            r00, r10, r01, r11, _, _, _, _, fu, fv, _ = _level_cell(
                meta_ptr, level, plane, rows_per_plane, u, v)
            # Weights as (g * (1 - fu)) * (1 - fv), not g * w00: that product order is the rounding
            # this kernel has always had (the unused weights are dropped by the compiler).
            for f in tl.static_range(FEAT):
                col = (plane * NUM_LEVELS + level) * FEAT + f
                g = tl.load(grad_out_ptr + offs.to(tl.int64) * out_dim + col, mask=mask, other=0.0)
                tl.atomic_add(grad_emb_ptr + r00 * FEAT + f, g * (1.0 - fu) * (1.0 - fv), mask=mask)
                tl.atomic_add(grad_emb_ptr + r10 * FEAT + f, g * fu * (1.0 - fv), mask=mask)
                tl.atomic_add(grad_emb_ptr + r01 * FEAT + f, g * (1.0 - fu) * fv, mask=mask)
                tl.atomic_add(grad_emb_ptr + r11 * FEAT + f, g * fu * fv, mask=mask)


@triton.jit
def _hashgrid_bwd_points_kernel(points_ptr, grad_out_ptr, emb_ptr, grad_points_ptr, meta_ptr, n_points,
                                rows_per_plane, bound, NUM_PLANES: tl.constexpr, NUM_LEVELS: tl.constexpr,
                                FEAT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    out_dim: tl.constexpr = NUM_PLANES * NUM_LEVELS * FEAT
    gx = tl.zeros((BLOCK,), dtype=tl.float32)
    gy = tl.zeros((BLOCK,), dtype=tl.float32)
    gz = tl.zeros((BLOCK,), dtype=tl.float32)
    for plane in tl.static_range(NUM_PLANES):
        ua, ub = _plane_uv_unclamped(points_ptr, offs, mask, plane, bound)   # read once, clamped here
        u, v = _clamp01(ua), _clamp01(ub)
        gu = tl.zeros((BLOCK,), dtype=tl.float32)
        gv = tl.zeros((BLOCK,), dtype=tl.float32)
        for level in tl.static_range(NUM_LEVELS):
            r00, r10, r01, r11, _, _, _, _, fu, fv, scale = _level_cell(
                meta_ptr, level, plane, rows_per_plane, u, v)
            for f in tl.static_range(FEAT):
                col = (plane * NUM_LEVELS + level) * FEAT + f
                g = tl.load(grad_out_ptr + offs.to(tl.int64) * out_dim + col, mask=mask, other=0.0)
                e00 = tl.load(emb_ptr + r00 * FEAT + f, mask=mask, other=0.0)
                e10 = tl.load(emb_ptr + r10 * FEAT + f, mask=mask, other=0.0)
                e01 = tl.load(emb_ptr + r01 * FEAT + f, mask=mask, other=0.0)
                e11 = tl.load(emb_ptr + r11 * FEAT + f, mask=mask, other=0.0)
                gu += g * scale * ((1.0 - fv) * (e10 - e00) + fv * (e11 - e01))
                gv += g * scale * ((1.0 - fu) * (e01 - e00) + fu * (e11 - e10))
        # d(unit)/d(point) = 1 / (2 bound) inside [0, 1] (inclusive, as torch.clamp's backward), else 0.
        gu = tl.where((ua >= 0.0) & (ua <= 1.0), gu / (2.0 * bound), 0.0)
        gv = tl.where((ub >= 0.0) & (ub <= 1.0), gv / (2.0 * bound), 0.0)
        # Plane axes (0,1), (1,2), (0,2), as PLANE_AXES.
        if plane == 0:
            gx += gu
            gy += gv
        elif plane == 1:
            gy += gu
            gz += gv
        else:
            gx += gu
            gz += gv
    tl.store(grad_points_ptr + offs * 3 + 0, gx, mask=mask)
    tl.store(grad_points_ptr + offs * 3 + 1, gy, mask=mask)
    tl.store(grad_points_ptr + offs * 3 + 2, gz, mask=mask)


_META_CACHE: dict[tuple[HashGridConfig, str], torch.Tensor] = {}


def _level_meta(cfg: HashGridConfig, device: torch.device) -> torch.Tensor:
    key = (cfg, str(device))
    if key not in _META_CACHE:
        layout = level_layout(cfg)
        rows = [[layout.resolutions[i], layout.offsets[i], layout.sizes[i], int(layout.dense[i])]
                for i in range(cfg.num_levels)]
        _META_CACHE[key] = torch.tensor(rows, dtype=torch.int32, device=device).contiguous()
    return _META_CACHE[key]


class _FusedHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: torch.Tensor, embeddings: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
        points = points.detach().float().contiguous()
        table = embeddings.detach().float().contiguous()
        n = points.shape[0]
        out = torch.empty(n, cfg.output_dim, device=points.device, dtype=torch.float32)
        meta = _level_meta(cfg, points.device)
        grid = (triton.cdiv(n, BLOCK_POINTS),)
        if n:
            _hashgrid_fwd_kernel[grid](points, table, out, meta, n, table.shape[1], float(cfg.bound),
                                       NUM_PLANES=len(PLANE_AXES), NUM_LEVELS=cfg.num_levels,
                                       FEAT=cfg.features_per_level, BLOCK=BLOCK_POINTS)
        # The table is kept only when the points need a gradient (its second kernel reads it).
        ctx.save_for_backward(points, table if ctx.needs_input_grad[0] else None)
        ctx.cfg = cfg
        ctx.table_shape = table.shape
        ctx.table_dtype = embeddings.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        points, table = ctx.saved_tensors
        cfg: HashGridConfig = ctx.cfg
        grad_out = grad_out.float().contiguous()
        meta = _level_meta(cfg, points.device)
        n = points.shape[0]
        launch = (triton.cdiv(n, BLOCK_POINTS),)
        constants = dict(NUM_PLANES=len(PLANE_AXES), NUM_LEVELS=cfg.num_levels, FEAT=cfg.features_per_level,
                         BLOCK=BLOCK_POINTS)
        grad_emb = grad_points = None
        if ctx.needs_input_grad[1]:
            grad_emb = torch.zeros(ctx.table_shape, device=points.device, dtype=torch.float32)
            if n:
                _hashgrid_bwd_kernel[launch](points, grad_out, grad_emb, meta, n, ctx.table_shape[1],
                                             float(cfg.bound), **constants)
            grad_emb = grad_emb.to(ctx.table_dtype)
        if ctx.needs_input_grad[0]:
            grad_points = torch.zeros_like(points)
            if n:
                _hashgrid_bwd_points_kernel[launch](points, grad_out, table, grad_points, meta, n,
                                                    ctx.table_shape[1], float(cfg.bound), **constants)
        return grad_points, grad_emb, None


def hashgrid_encode_fused(points: torch.Tensor, embeddings: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Same contract as hashgrid_encode_reference (float32 output), but one fused kernel each way."""
    if HASH_PRIME_Y != 2654435761:  # the kernel hard-codes the prime; keep the two in step
        raise AssertionError("hash prime changed without updating the Triton kernel")
    return _FusedHashGrid.apply(points, embeddings, cfg)
