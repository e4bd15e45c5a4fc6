"""Benchmark the NeRF hot ops on CUDA: fused Triton kernels vs the PyTorch reference.

Usage:  PYTHONPATH=. python benchmarks/bench_kernels.py [--points 262144] [--rays 65536]
Prints one table of median milliseconds (triton.testing.do_bench, CUDA events), forward and
forward+backward. Inputs are rotated among several random sets so the timing is not an L2-cache
replay of one buffer. Baseline row: a plain-torch single 2-D hash grid of 16 levels x 2 features.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from synctalk.nerf.encoding.hashgrid import (HASH_PRIME_Y, HashGridConfig, hashgrid_encode_reference,
                                             level_layout)
from synctalk.nerf.render.composite import composite_packed_reference


def plain_torch_2d_hash(uv: torch.Tensor, table: torch.Tensor, resolutions: list[int]) -> torch.Tensor:
    """The baseline: one 2-D hashed grid, all levels hashed, bilinear, plain torch ops."""
    size = table.shape[1]
    out = []
    for level, res in enumerate(resolutions):
        pos = uv * (res - 1) + 0.5
        cell = pos.floor()
        frac = pos - cell
        cell = cell.long()
        acc = 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                idx = ((cell[:, 0] + dx) ^ (((cell[:, 1] + dy) * HASH_PRIME_Y) & 0xFFFFFFFF)) % size
                acc = acc + w[:, None] * table[level, idx]
        out.append(acc)
    return torch.cat(out, -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1 << 18)
    ap.add_argument("--rays", type=int, default=1 << 16)
    ap.add_argument("--sets", type=int, default=4, help="input sets rotated between timed calls")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels needs CUDA", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench

    from synctalk.nerf.kernels.composite_triton import composite_packed_fused
    from synctalk.nerf.kernels.hashgrid_triton import hashgrid_encode_fused

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows: list[tuple[str, float, float]] = []

    def bench(name: str, fwd, make_inputs) -> None:
        sets = [make_inputs() for _ in range(args.sets)]
        counter = {"i": 0}

        def next_set():
            counter["i"] = (counter["i"] + 1) % len(sets)
            return sets[counter["i"]]

        def run_fwd():
            with torch.no_grad():
                fwd(*next_set()[0])

        def run_fwd_bwd():
            inputs, params, upstream = next_set()
            outs = fwd(*inputs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            grads = [u for u in upstream]
            torch.autograd.backward([o for o, g in zip(outs, grads) if g is not None],
                                    [g for g in grads if g is not None])
            for p in params:
                p.grad = None

        f = do_bench(run_fwd, warmup=50, rep=300, return_mode="median")
        fb = do_bench(run_fwd_bwd, warmup=50, rep=300, return_mode="median")
        rows.append((name, f, fb))

    n = args.points
    cfg = HashGridConfig()
    total_rows = level_layout(cfg).total_rows

    def grid_inputs():
        table = (torch.rand(3, total_rows, 1, device=dev) * 2e-4 - 1e-4).requires_grad_()
        pts = torch.rand(n, 3, device=dev) * 2 - 1
        return (pts, table, cfg), [table], [torch.randn(n, cfg.output_dim, device=dev)]

    bench(f"tri-plane hashgrid 3x12x1, {n} pts, fused", hashgrid_encode_fused, grid_inputs)
    bench(f"tri-plane hashgrid 3x12x1, {n} pts, reference", hashgrid_encode_reference, grid_inputs)

    resolutions = [int(16 * 1.38**i) for i in range(16)]

    def baseline_inputs():
        table = (torch.rand(16, 1 << 19, 2, device=dev) * 2e-4 - 1e-4).requires_grad_()
        return (torch.rand(n, 2, device=dev), table, resolutions), [table], [torch.randn(n, 32, device=dev)]

    bench(f"baseline plain-torch 2D hash 16x2, {n} pts", plain_torch_2d_hash, baseline_inputs)

    big = HashGridConfig(num_levels=16, features_per_level=2, log2_table_size=19, base_resolution=16,
                         finest_resolution=2048)
    big_rows = level_layout(big).total_rows

    def big_inputs():
        table = (torch.rand(3, big_rows, 2, device=dev) * 2e-4 - 1e-4).requires_grad_()
        return ((torch.rand(n, 3, device=dev) * 2 - 1, table, big), [table],
                [torch.randn(n, big.output_dim, device=dev)])

    bench(f"tri-plane hashgrid 3x16x2 (2^19), {n} pts, fused", hashgrid_encode_fused, big_inputs)

    r = args.rays

    def composite_inputs():
        counts = torch.randint(0, 17, (r,), device=dev)
        ray_indices = torch.repeat_interleave(torch.arange(r, device=dev), counts)
        s = ray_indices.numel()
        sig = (torch.rand(s, device=dev) ** 3 * 300).requires_grad_()
        vals = torch.rand(s, 4, device=dev).requires_grad_()
        deltas = torch.full((s,), 2 * 3**0.5 / 128, device=dev)
        return ((sig, deltas, vals, ray_indices, r, 1e-4), [sig, vals],
                [None, torch.randn(r, device=dev), torch.randn(r, 4, device=dev)])

    bench(f"composite packed, {r} rays x <=16 samples, C=4, fused", composite_packed_fused, composite_inputs)
    bench(f"composite packed, {r} rays x <=16 samples, C=4, reference", composite_packed_reference,
          composite_inputs)

    print(f"\ndevice: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"python {platform.python_version()}")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'op':<{width}}  {'fwd ms':>8}  {'fwd+bwd ms':>10}")
    for name, f, fb in rows:
        print(f"{name:<{width}}  {f:8.3f}  {fb:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
