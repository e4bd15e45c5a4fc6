"""The head field's inference shading (density + colour of samples) with its weights packed for a fused kernel.

At render time the field is fixed, so its MLPs can be rearranged once instead of per call:

* the concatenations of ``HeadField.forward`` (sigma-net input ``[f, a*A_aud, e*A_expr]``, colour-net
  input ``[SH(d), geo, code]``) become sums of per-block matrix products (W [x; y] = W_x x + W_y y), so
  nothing is concatenated (on the H100 the ``cat`` kernels were 30 % of the field's time);
* the individual appearance code is fixed (code 0, as the original's test path), so its colour-net
  block is a constant bias;
* every matrix is stored transposed ([in, out]) and zero-padded to a power of two >= 16, the shapes
  a tensor-core ``dot`` needs; padding rows/columns are zero so they change nothing.

Two implementations of the same arithmetic: ``shade_packed_reference`` (plain PyTorch, any device; the
CPU path and the tests' reference) and the fused Triton kernel in ``shade_triton`` (one pass per block of
samples: gather the frame's audio code and expression, both gates, the sigma net, SH and the colour
net, with no intermediate tensor in GPU memory), used on CUDA. With ``matmul_dtype=bfloat16`` the
reference rounds where the kernel (and the trainer's bf16 autocast) round, so the two agree to float
reassociation; tests_gpu/test_render_shade_gpu.py checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from synctalk.nerf.encoding.sh import sh_encode
from synctalk.nerf.field import MAX_LOG_DENSITY, HeadField


# Weights of the fused kernel: fp32 with TF32 tensor-core products. (Its bf16/fp16 build hit an illegal
# memory access under Triton 3.6 on the H100 while the same kernel agreed with the reference in fp32
# there and in the Triton interpreter. The interpreter cannot vouch for bf16: its own tl.dot on bf16
# operands is wrong (relative error ~1e10 on a bare product, checked 2026-12-07), so the bf16 kernel
# has no check anywhere.) TF32 keeps 10 mantissa bits against bf16's 7, so this is closer to the fp32
# field than training's bf16 autocast.
FUSED_WEIGHT_DTYPE = torch.float32
# Samples per call of the PyTorch shading on the CPU: its [n, 64] fp32 intermediates stay at 8 MiB, small
# enough for the allocator to reuse instead of mapping and unmapping them (see ``shade``).
CPU_SHADE_CHUNK = 1 << 15


def _pad_dim(n: int, least: int = 16) -> int:
    """Smallest power of two >= max(n, least) (tensor-core dot operands need >= 16 along every axis)."""
    p = least
    while p < n:
        p *= 2
    return p


def _linears(seq: nn.Sequential) -> list[torch.Tensor]:
    return [m.weight.detach() for m in seq if isinstance(m, nn.Linear)]


@dataclass
class PackedField:
    """Transposed, zero-padded weights of a HeadField ([in_pad, out_pad], ``dtype``), fp32 vectors."""

    dims: dict[str, int]            # pos, pos_p, audio, expr, expr_p, hidden, geo, sh, out_p
    gate_audio: tuple[torch.Tensor, torch.Tensor]        # [pos_p, H], [H, audio]
    gate_expr: tuple[torch.Tensor, torch.Tensor]         # [pos_p, H], [H, expr_p]
    sigma_in: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # from f [pos_p, H], a [audio, H], e [expr_p, H]
    sigma_hidden: torch.Tensor                           # [H, H]
    sigma_out: torch.Tensor                              # [H] fp32: the density row
    geo_out: torch.Tensor                                # [H, geo]
    colour_sh: torch.Tensor                              # [sh, H]
    colour_geo: torch.Tensor                             # [geo, H]
    colour_bias: torch.Tensor                            # [H] fp32: the fixed individual code's share
    colour_out: torch.Tensor                             # [H, out_p] (3 used)


def pack_field(field: HeadField, dtype: torch.dtype = torch.bfloat16, individual: int = 0,
               least: int = 16) -> PackedField:
    """Rearrange ``field``'s weights for ``shade_packed_reference`` / the fused kernel (see module doc)."""
    cfg = field.cfg
    if len(field.sigma_net) != 5 or len(field.color_net) != 3:
        raise ValueError("pack_field expects the 3-layer sigma net and 2-layer colour net of HeadField")
    pos, audio, expr = field.grid.output_dim, cfg.audio_dim, cfg.expression_dim
    hidden, geo, sh = cfg.hidden, cfg.geo_dim, cfg.sh_degree ** 2
    if _pad_dim(hidden) != hidden or _pad_dim(geo) != geo or _pad_dim(audio) != audio or _pad_dim(sh) != sh:
        raise ValueError("hidden, geo, audio and SH widths must be powers of two >= 16 for the packed field")
    dims = {"pos": pos, "pos_p": _pad_dim(pos, least), "audio": audio, "expr": expr,
            "expr_p": _pad_dim(expr, least), "hidden": hidden, "geo": geo, "sh": sh, "out_p": _pad_dim(3, least)}

    def t(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Linear weight [out, in] -> [rows, cols] = W^T zero-padded."""
        out = torch.zeros(rows, cols, dtype=torch.float32, device=w.device)
        out[: w.shape[1], : w.shape[0]] = w.t().float()
        return out.to(dtype).contiguous()

    a1, a2 = _linears(field.audio_gate)
    e1, e2 = _linears(field.expression_gate)
    s1, s2, s3 = _linears(field.sigma_net)
    c1, c2 = _linears(field.color_net)
    s1f, s1a, s1e = s1[:, :pos], s1[:, pos:pos + audio], s1[:, pos + audio:]
    c1s, c1g, c1c = c1[:, :sh], c1[:, sh:sh + geo], c1[:, sh + geo:]
    code = field.individual.detach()[individual].float().to(dtype).float()
    return PackedField(
        dims=dims,
        gate_audio=(t(a1, dims["pos_p"], hidden), t(a2, hidden, audio)),
        gate_expr=(t(e1, dims["pos_p"], hidden), t(e2, hidden, dims["expr_p"])),
        sigma_in=(t(s1f, dims["pos_p"], hidden), t(s1a, audio, hidden), t(s1e, dims["expr_p"], hidden)),
        sigma_hidden=t(s2, hidden, hidden),
        sigma_out=s3[0].to(dtype).float().contiguous(),
        geo_out=t(s3[1:], hidden, geo),
        colour_sh=t(c1s, sh, hidden),
        colour_geo=t(c1g, geo, hidden),
        colour_bias=(c1c.to(dtype).float() @ code).contiguous(),
        colour_out=t(c2, hidden, dims["out_p"]),
    )


def shade_packed_reference(packed: PackedField, features: torch.Tensor, dirs: torch.Tensor,
                           sample_frames: torch.Tensor, codes: torch.Tensor, expressions: torch.Tensor,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """features [N, pos] (hash-grid output), dirs [N, 3] unit, sample_frames [N] (row of codes /
    expressions), codes [B, audio], expressions [B, expr] -> sigma [N] fp32, rgb [N, 3] fp32.

    Matrix products take operands in the packed dtype with fp32 accumulation; each layer's output is
    rounded to that dtype before the next, as bf16 autocast does (exact fp32 when packed in fp32)."""
    d = packed.dims
    dt = packed.sigma_hidden.dtype
    n = features.shape[0]

    def mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (x.to(dt).float() @ w.float())

    def rnd(x: torch.Tensor) -> torch.Tensor:
        return x.to(dt).float()

    f = features.float().new_zeros(n, d["pos_p"])
    f[:, : d["pos"]] = features.float()
    frames = sample_frames.long()
    audio_gate = rnd(mm(rnd(torch.relu(mm(f, packed.gate_audio[0]))), packed.gate_audio[1]))
    expr_gate = rnd(torch.relu(mm(rnd(torch.relu(mm(f, packed.gate_expr[0]))), packed.gate_expr[1])))
    audio = codes.float().index_select(0, frames)
    expr = expressions.float().new_zeros(expressions.shape[0], d["expr_p"])
    expr[:, : d["expr"]] = expressions.float()
    expr = expr.index_select(0, frames)
    x = (mm(f, packed.sigma_in[0]) + mm(audio * audio_gate, packed.sigma_in[1])
         + mm(expr * expr_gate, packed.sigma_in[2]))
    x = rnd(torch.relu(x))
    x = rnd(torch.relu(mm(x, packed.sigma_hidden)))
    raw = rnd(x @ packed.sigma_out)
    sigma = torch.exp(raw.clamp(max=MAX_LOG_DENSITY))
    geo = rnd(mm(x, packed.geo_out))
    sh = rnd(sh_encode(dirs.float(), round(d["sh"] ** 0.5)))
    c = mm(sh, packed.colour_sh) + mm(geo, packed.colour_geo) + packed.colour_bias
    c = rnd(torch.relu(c))
    out = rnd(mm(c, packed.colour_out))[:, :3]
    rgb = torch.sigmoid(out) * (1 + 2e-3) - 1e-3
    return sigma, rgb


def fused_shade_enabled(device: torch.device) -> bool:
    """The Triton kernel on CUDA unless SYNCTALK_NERF_BACKEND=reference (same switch as the other kernels)."""
    if device.type != "cuda" or os.environ.get("SYNCTALK_NERF_BACKEND", "auto") == "reference":
        return False
    from synctalk.nerf.kernels import triton_available

    return triton_available()


def shade(packed: PackedField, features: torch.Tensor, dirs: torch.Tensor, sample_frames: torch.Tensor,
          codes: torch.Tensor, expressions: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: the fused kernel when ``fused`` (CUDA), else the PyTorch reference."""
    if fused:
        from synctalk.render.shade_triton import shade_fused

        return shade_fused(packed, features, dirs, sample_frames, codes, expressions)
    if features.device.type != "cpu" or features.shape[0] <= CPU_SHADE_CHUNK:
        return shade_packed_reference(packed, features, dirs, sample_frames, codes, expressions)
    # On the CPU, in chunks: every [N, 64] intermediate of a whole batch (millions of samples) is a fresh
    # few-hundred-MB mmap that the kernel zero-fills page by page and unmaps again; that, not the matrix
    # products, was most of a CPU render (a 10-frame tiny render: 82 s, 63 of them in this function).
    parts = [shade_packed_reference(packed, features[i:i + CPU_SHADE_CHUNK], dirs[i:i + CPU_SHADE_CHUNK],
                                    sample_frames[i:i + CPU_SHADE_CHUNK], codes, expressions)
             for i in range(0, features.shape[0], CPU_SHADE_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
