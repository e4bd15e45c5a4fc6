"""Fused inference shading of the head field (Triton, CUDA): ``shade_packed_reference`` in one kernel.

Each program takes BLOCK samples and does everything in registers / shared memory: load the hash-grid
features, gather the sample's frame audio code and expression, both Face-Sync gates, the three-layer
sigma net, the SH encoding of the direction and the two-layer colour net, then writes sigma and rgb.
The eager version launched ~40 kernels per call and wrote every intermediate ([N, 64] bf16 tensors,
their concatenations, the per-sample code gathers) to GPU memory; this one reads the 36 features, 3
direction floats and a frame index per sample and writes 4 floats. Matrix products run on tensor cores
(bf16 operands, fp32 accumulation) and every layer is rounded to bf16 where the reference rounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from synctalk.nerf.encoding import sh as _sh
from synctalk.nerf.field import MAX_LOG_DENSITY
from synctalk.render.shade import PackedField

# Measured on the H100 for 2 M samples (fp32 weights): 128/4 1.31 ms, 64/2 1.34, 64/4 1.83, 128/8 1.82.
BLOCK = 128
NUM_WARPS = 4

# The SH basis constants of synctalk.nerf.encoding.sh, as constexpr so the JIT can read them.
_C0 = tl.constexpr(_sh._C0)
_C1 = tl.constexpr(_sh._C1)
_C20, _C21, _C22, _C23 = (tl.constexpr(c) for c in _sh._C2)
_C30, _C31, _C32, _C33, _C34 = (tl.constexpr(c) for c in _sh._C3)


@triton.jit
def _w(ptr, K: tl.constexpr, N: tl.constexpr):
    """Load a row-major [K, N] matrix."""
    return tl.load(ptr + tl.arange(0, K)[:, None] * N + tl.arange(0, N)[None, :])


@triton.jit
def _bf(x, WDT: tl.constexpr):
    """Round to the weight dtype and back (where the reference / autocast stores a bf16 tensor)."""
    return x.to(WDT).to(tl.float32)


@triton.jit
def _sh_term(acc, coeff, w_ptr, row: tl.constexpr, H: tl.constexpr, WDT: tl.constexpr):
    """acc += bf16(coeff)[:, None] * W_sh[row, :] (one SH basis function's share of the colour layer)."""
    w = tl.load(w_ptr + row * H + tl.arange(0, H)).to(tl.float32)
    return acc + _bf(coeff, WDT)[:, None] * w[None, :]


@triton.jit
def _shade_kernel(feat_ptr, dirs_ptr, frame_ptr, codes_ptr, expr_ptr,
                  wa1, wa2, we1, we2, w1f, w1a, w1e, w2, w3s, w3g, wcs, wcg, cbias, wc2,
                  sigma_ptr, rgb_ptr, n,
                  POS: tl.constexpr, POS_P: tl.constexpr, AUD: tl.constexpr, EXP: tl.constexpr,
                  EXP_P: tl.constexpr, H: tl.constexpr, GEO: tl.constexpr, OUT_P: tl.constexpr,
                  MAX_LOG: tl.constexpr, BLOCK: tl.constexpr, WDT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    cp = tl.arange(0, POS_P)
    f = tl.load(feat_ptr + rows[:, None] * POS + cp[None, :], mask=live[:, None] & (cp[None, :] < POS), other=0.0)
    f = f.to(WDT)

    # Face-Sync gates: A_aud = W2 relu(W1 f), A_expr = relu(W2 relu(W1 f)), each output stored as bf16.
    h = tl.maximum(tl.dot(f, _w(wa1, POS_P, H)), 0.0).to(WDT)
    gate_a = _bf(tl.dot(h, _w(wa2, H, AUD)), WDT)
    h = tl.maximum(tl.dot(f, _w(we1, POS_P, H)), 0.0).to(WDT)
    gate_e = _bf(tl.maximum(tl.dot(h, _w(we2, H, EXP_P)), 0.0), WDT)

    # The sample's frame conditions (a handful of rows, cached).
    fr = tl.load(frame_ptr + rows, mask=live, other=0).to(tl.int64)
    ca = tl.arange(0, AUD)
    audio = tl.load(codes_ptr + fr[:, None] * AUD + ca[None, :], mask=live[:, None], other=0.0)
    ce = tl.arange(0, EXP_P)
    expr = tl.load(expr_ptr + fr[:, None] * EXP + ce[None, :], mask=live[:, None] & (ce[None, :] < EXP), other=0.0)

    # Sigma net: W1 [f; a*A_aud; e*A_expr] as three block products, then two more layers.
    x = tl.dot(f, _w(w1f, POS_P, H))
    x += tl.dot((audio * gate_a).to(WDT), _w(w1a, AUD, H))
    x += tl.dot((expr * gate_e).to(WDT), _w(w1e, EXP_P, H))
    x = tl.maximum(x, 0.0).to(WDT)
    x = tl.maximum(tl.dot(x, _w(w2, H, H)), 0.0).to(WDT)
    w_sigma = tl.load(w3s + tl.arange(0, H))
    raw = _bf(tl.sum(x.to(tl.float32) * w_sigma[None, :], axis=1), WDT)
    sigma = tl.exp(tl.minimum(raw, MAX_LOG))
    geo = tl.dot(x, _w(w3g, H, GEO)).to(WDT)

    # Colour net: SH(d) (degree 4, 16 terms) as rank-1 updates, geo block on tensor cores, code bias.
    dx = tl.load(dirs_ptr + rows * 3 + 0, mask=live, other=0.0)
    dy = tl.load(dirs_ptr + rows * 3 + 1, mask=live, other=0.0)
    dz = tl.load(dirs_ptr + rows * 3 + 2, mask=live, other=0.0)
    xx = dx * dx
    yy = dy * dy
    zz = dz * dz
    c = tl.dot(geo, _w(wcg, GEO, H))
    c += tl.load(cbias + tl.arange(0, H))[None, :]
    c = _sh_term(c, tl.zeros((BLOCK,), tl.float32) + _C0, wcs, 0, H, WDT)
    c = _sh_term(c, dy * (-_C1), wcs, 1, H, WDT)
    c = _sh_term(c, dz * _C1, wcs, 2, H, WDT)
    c = _sh_term(c, dx * (-_C1), wcs, 3, H, WDT)
    c = _sh_term(c, dx * dy * _C20, wcs, 4, H, WDT)
    c = _sh_term(c, dy * dz * (-_C20), wcs, 5, H, WDT)
    c = _sh_term(c, zz * _C21 - _C22, wcs, 6, H, WDT)
    c = _sh_term(c, dx * dz * (-_C20), wcs, 7, H, WDT)
    c = _sh_term(c, (xx - yy) * _C23, wcs, 8, H, WDT)
    c = _sh_term(c, dy * (yy - 3 * xx) * _C30, wcs, 9, H, WDT)
    c = _sh_term(c, dx * dy * dz * _C31, wcs, 10, H, WDT)
    c = _sh_term(c, dy * (1 - 5 * zz) * _C32, wcs, 11, H, WDT)
    c = _sh_term(c, dz * (5 * zz - 3) * _C33, wcs, 12, H, WDT)
    c = _sh_term(c, dx * (1 - 5 * zz) * _C32, wcs, 13, H, WDT)
    c = _sh_term(c, dz * (xx - yy) * _C34, wcs, 14, H, WDT)
    c = _sh_term(c, dx * (3 * yy - xx) * _C30, wcs, 15, H, WDT)
    c = tl.maximum(c, 0.0).to(WDT)
    out = _bf(tl.dot(c, _w(wc2, H, OUT_P)), WDT)
    rgb = tl.sigmoid(out) * (1 + 2e-3) - 1e-3

    tl.store(sigma_ptr + rows, sigma, mask=live)
    co = tl.arange(0, OUT_P)
    tl.store(rgb_ptr + rows[:, None] * 3 + co[None, :], rgb, mask=live[:, None] & (co[None, :] < 3))


def shade_fused(packed: PackedField, features: torch.Tensor, dirs: torch.Tensor, sample_frames: torch.Tensor,
                codes: torch.Tensor, expressions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``synctalk.render.shade.shade_packed_reference`` (bf16-packed weights)."""
    d = packed.dims
    wdt = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}.get(packed.sigma_hidden.dtype)
    if wdt is None or d["sh"] != 16:
        raise ValueError("the fused shading kernel needs bf16/fp16/fp32-packed weights and SH degree 4")
    n = features.shape[0]
    sigma = torch.empty(n, device=features.device, dtype=torch.float32)
    rgb = torch.empty(n, 3, device=features.device, dtype=torch.float32)
    if n == 0:
        return sigma, rgb
    grid = (triton.cdiv(n, BLOCK),)
    _shade_kernel[grid](
        features.float().contiguous(), dirs.float().contiguous(), sample_frames.to(torch.int32).contiguous(),
        codes.float().contiguous(), expressions.float().contiguous(),
        *packed.gate_audio, *packed.gate_expr, *packed.sigma_in, packed.sigma_hidden, packed.sigma_out,
        packed.geo_out, packed.colour_sh, packed.colour_geo, packed.colour_bias, packed.colour_out,
        sigma, rgb, n,
        POS=d["pos"], POS_P=d["pos_p"], AUD=d["audio"], EXP=d["expr"], EXP_P=d["expr_p"], H=d["hidden"],
        GEO=d["geo"], OUT_P=d["out_p"], MAX_LOG=MAX_LOG_DENSITY, BLOCK=BLOCK, WDT=wdt, num_warps=NUM_WARPS)
    return sigma, rgb
