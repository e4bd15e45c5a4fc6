"""Fused packed-sample compositing: forward and analytic backward, one program per BLOCK rays.

Each lane walks its ray's samples in depth order (at most max_steps, 16 in the original), so the
per-ray transmittance is a running product in registers instead of a segmented cumsum.
Backward uses the standard closed form (w_i = T_i a_i, values v_i, upstream g, g_A for opacity):
  dL/dv_i     = w_i g
  dL/dsigma_i = d_i [ T_{i+1} (g.v_i + g_A) - sum_{k>i} w_k (g.v_k + g_A) ]
where the suffix sum is (g.out + g_A A) minus the running prefix, both known from the forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_RAYS = 64


@triton.jit
def _composite_fwd_kernel(sigma_ptr, delta_ptr, values_ptr, start_ptr, count_ptr, weights_ptr, opacity_ptr,
                          out_ptr, n_rays, max_count, min_transmittance,
                          CHANNELS: tl.constexpr, CPAD: tl.constexpr, BLOCK: tl.constexpr):
    rays = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ray_mask = rays < n_rays
    start = tl.load(start_ptr + rays, mask=ray_mask, other=0).to(tl.int64)
    count = tl.load(count_ptr + rays, mask=ray_mask, other=0)
    chans = tl.arange(0, CPAD)
    chan_mask = chans < CHANNELS
    trans = tl.full((BLOCK,), 1.0, tl.float32)
    opacity = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK, CPAD), tl.float32)
    for k in range(0, max_count):
        in_ray = ray_mask & (k < count)
        live = in_ray & (trans >= min_transmittance)
        idx = start + k
        sigma = tl.load(sigma_ptr + idx, mask=live, other=0.0)
        delta = tl.load(delta_ptr + idx, mask=live, other=0.0)
        alpha = 1.0 - tl.exp(-sigma * delta)
        w = tl.where(live, alpha * trans, 0.0)
        vals = tl.load(values_ptr + idx[:, None] * CHANNELS + chans[None, :],
                       mask=live[:, None] & chan_mask[None, :], other=0.0)
        acc += w[:, None] * vals
        opacity += w
        trans = tl.where(live, trans * (1.0 - alpha), trans)
        tl.store(weights_ptr + idx, w, mask=in_ray)
    tl.store(opacity_ptr + rays, opacity, mask=ray_mask)
    tl.store(out_ptr + rays.to(tl.int64)[:, None] * CHANNELS + chans[None, :], acc,
             mask=ray_mask[:, None] & chan_mask[None, :])


@triton.jit
def _composite_bwd_kernel(sigma_ptr, delta_ptr, values_ptr, start_ptr, count_ptr, opacity_ptr, out_ptr,
                          grad_opacity_ptr, grad_out_ptr, grad_sigma_ptr, grad_values_ptr, n_rays, max_count,
                          min_transmittance, CHANNELS: tl.constexpr, CPAD: tl.constexpr, BLOCK: tl.constexpr):
    rays = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ray_mask = rays < n_rays
    start = tl.load(start_ptr + rays, mask=ray_mask, other=0).to(tl.int64)
    count = tl.load(count_ptr + rays, mask=ray_mask, other=0)
    chans = tl.arange(0, CPAD)
    chan_mask = chans < CHANNELS
    ray_chan_mask = ray_mask[:, None] & chan_mask[None, :]
    ray_off = rays.to(tl.int64)[:, None] * CHANNELS + chans[None, :]
    g = tl.load(grad_out_ptr + ray_off, mask=ray_chan_mask, other=0.0)
    g_opacity = tl.load(grad_opacity_ptr + rays, mask=ray_mask, other=0.0)
    total = (tl.sum(g * tl.load(out_ptr + ray_off, mask=ray_chan_mask, other=0.0), axis=1)
             + g_opacity * tl.load(opacity_ptr + rays, mask=ray_mask, other=0.0))
    trans = tl.full((BLOCK,), 1.0, tl.float32)
    prefix = tl.zeros((BLOCK,), tl.float32)
    for k in range(0, max_count):
        in_ray = ray_mask & (k < count)
        live = in_ray & (trans >= min_transmittance)
        idx = start + k
        sigma = tl.load(sigma_ptr + idx, mask=live, other=0.0)
        delta = tl.load(delta_ptr + idx, mask=live, other=0.0)
        alpha = 1.0 - tl.exp(-sigma * delta)
        w = tl.where(live, alpha * trans, 0.0)
        sample_mask = live[:, None] & chan_mask[None, :]
        vals = tl.load(values_ptr + idx[:, None] * CHANNELS + chans[None, :], mask=sample_mask, other=0.0)
        gv = tl.sum(g * vals, axis=1) + g_opacity
        prefix += w * gv
        trans_next = trans * (1.0 - alpha)
        grad_sigma = tl.where(live, delta * (trans_next * gv - (total - prefix)), 0.0)
        tl.store(grad_sigma_ptr + idx, grad_sigma, mask=in_ray)
        tl.store(grad_values_ptr + idx[:, None] * CHANNELS + chans[None, :], w[:, None] * g,
                 mask=in_ray[:, None] & chan_mask[None, :])
        trans = tl.where(live, trans_next, trans)


def _ray_ranges(ray_indices: torch.Tensor, num_rays: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    counts = torch.bincount(ray_indices, minlength=num_rays)
    starts = torch.cumsum(counts, 0) - counts
    max_count = int(counts.max()) if counts.numel() else 0
    return starts.to(torch.int64).contiguous(), counts.to(torch.int32).contiguous(), max_count


class _FusedComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, deltas, values, ray_indices, num_rays: int, min_transmittance: float):
        sigmas_f = sigmas.detach().float().contiguous()
        deltas_f = deltas.detach().float().contiguous()
        values_f = values.detach().float().contiguous()
        channels = values_f.shape[1]
        starts, counts, max_count = _ray_ranges(ray_indices, num_rays)
        weights = torch.empty_like(sigmas_f)
        opacity = torch.empty(num_rays, device=sigmas.device, dtype=torch.float32)
        out = torch.empty(num_rays, channels, device=sigmas.device, dtype=torch.float32)
        cpad = triton.next_power_of_2(max(channels, 1))
        grid = (triton.cdiv(num_rays, BLOCK_RAYS),)
        if num_rays:
            _composite_fwd_kernel[grid](sigmas_f, deltas_f, values_f, starts, counts, weights, opacity, out,
                                        num_rays, max_count, float(min_transmittance),
                                        CHANNELS=channels, CPAD=cpad, BLOCK=BLOCK_RAYS)
        ctx.save_for_backward(sigmas_f, deltas_f, values_f, starts, counts, opacity, out)
        ctx.meta = (num_rays, max_count, float(min_transmittance), channels, cpad)
        ctx.dtypes = (sigmas.dtype, values.dtype)
        ctx.mark_non_differentiable(weights)
        return weights, opacity, out

    @staticmethod
    def backward(ctx, _grad_weights, grad_opacity, grad_out):
        sigmas, deltas, values, starts, counts, opacity, out = ctx.saved_tensors
        num_rays, max_count, min_transmittance, channels, cpad = ctx.meta
        if grad_opacity is None:
            grad_opacity = torch.zeros_like(opacity)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_sigma = torch.zeros_like(sigmas)
        grad_values = torch.zeros_like(values)
        if num_rays:
            _composite_bwd_kernel[(triton.cdiv(num_rays, BLOCK_RAYS),)](
                sigmas, deltas, values, starts, counts, opacity, out, grad_opacity.float().contiguous(),
                grad_out.float().contiguous(), grad_sigma, grad_values, num_rays, max_count, min_transmittance,
                CHANNELS=channels, CPAD=cpad, BLOCK=BLOCK_RAYS)
        return grad_sigma.to(ctx.dtypes[0]), None, grad_values.to(ctx.dtypes[1]), None, None, None


def composite_packed_fused(sigmas: torch.Tensor, deltas: torch.Tensor, values: torch.Tensor,
                           ray_indices: torch.Tensor, num_rays: int, min_transmittance: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as composite_packed_reference; weights carry no gradient (see module doc)."""
    return _FusedComposite.apply(sigmas, deltas, values, ray_indices, num_rays, min_transmittance)
