"""Compile every Triton kernel of synctalk for the H100 (sm_90) on a machine WITHOUT a GPU, and print
registers, spills and shared memory per kernel and launch configuration.

Why: the GPU machine is scarce; a kernel edit that no longer compiles, or starts spilling, shows up here
in a minute on the CPU. triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32)) runs the whole
pipeline (ttir -> ttgir -> llir -> ptx -> cubin, with the ptxas inside the triton wheel) without a
driver. CompiledKernel.n_regs / n_spills are filled only when a GPU loads the binary, so registers and
spills come from `ptxas -v` re-run on the kernel's PTX with Triton's options (-lineinfo --gpu-name=sm_90a),
cross-checked with `cuobjdump --dump-resource-usage` on Triton's own cubin. Shared memory is
compiled.metadata.shared (what the launcher requests).

The argument types and constexpr values below mirror the launch sites (hash grid, composite, marcher,
shade); a kernel whose signature changes fails here with a clear KeyError/assertion, update it then.
Needs triton (not part of the CPU test environment): e.g.
    python3.11 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 triton==3.6.0 "numpy<2.4" safetensors
    env -u TRITON_INTERPRET /tmp/tvenv/bin/python benchmarks/kernel_resources_sm90.py [--json OUT] [--dump DIR]
(--dump keeps each kernel's PTX and cubin, e.g. to diff the machine code of two versions with
`cuobjdump -sass`.) Results: BENCHMARKS.md "NeRF kernels (GPU)".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

import argparse  # noqa: E402

_ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 help="the synctalk checkout whose kernels are compiled (default: this one)")
_ap.add_argument("--json", help="also write every row as JSON")
_ap.add_argument("--dump", help="keep each kernel's PTX and cubin in this folder")
_ap.add_argument("--hashgrid-only", action="store_true")
ARGS = _ap.parse_args()
if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
ROOT, OUT = ARGS.root, ARGS.json
sys.path.insert(0, ROOT)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402

import synctalk  # noqa: E402

assert os.path.realpath(synctalk.__file__).startswith(os.path.realpath(ROOT)), synctalk.__file__

from synctalk.nerf.kernels import composite_triton as ct  # noqa: E402
from synctalk.nerf.kernels import hashgrid_triton as ht  # noqa: E402
from synctalk.render import march_triton as mt  # noqa: E402
from synctalk.render import shade_triton as st  # noqa: E402
from synctalk.nerf.field import MAX_LOG_DENSITY  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = get_ptxas(90).path
CUOBJDUMP = os.path.join(os.path.dirname(PTXAS), "cuobjdump")
D16 = [["tt.divisibility", 16]]  # what the JIT attaches to 16-byte aligned pointer args (all fresh torch tensors)


def build(fn, types: dict[str, str], consts: dict, options: dict | None = None):
    """types: name -> '*fp32' / 'i32' / 'fp32' ... for the runtime args; consts: constexpr values."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = types[name]
            if types[name].startswith("*"):
                attrs[(i,)] = D16
    missing = set(fn.arg_names) - set(sig)
    assert not missing, missing
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=TARGET, options=options or {})


def ptxas_usage(ptx: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        open(p, "w").write(ptx)
        r = subprocess.run([PTXAS, "-lineinfo", "-v", "--gpu-name=sm_90a", p, "-o", p + ".o"],
                           capture_output=True, text=True, check=True)
    log = r.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    smem = re.search(r"(\d+) bytes smem", log)
    return {"regs": int(regs.group(1)), "spill_stores": int(spill.group(1)), "spill_loads": int(spill.group(2)),
            "stack": int(stack.group(1)), "ptxas_static_smem": int(smem.group(1)) if smem else 0,
            "ptxas_log": log.strip()}


def cuobjdump_usage(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.cubin")
        open(p, "wb").write(cubin)
        r = subprocess.run([CUOBJDUMP, "--dump-resource-usage", p], capture_output=True, text=True)
    m = re.search(r"(REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+)", r.stdout)
    return m.group(1).strip() if m else (r.stdout + r.stderr).strip()


P = "*fp32"
HG = {"points_ptr": P, "emb_ptr": P, "out_ptr": P, "meta_ptr": "*i32", "n_points": "i32",
      "rows_per_plane": "i32", "bound": "fp32", "grad_out_ptr": P, "grad_emb_ptr": P, "grad_points_ptr": P}
# (NUM_PLANES, NUM_LEVELS, FEAT): head default 3x12x1 (HashGridConfig()), torso forward 1x16x2 (grid2d.encode_fused),
# bench/tests_gpu 3x16x2 (2^19) and tests_gpu's 3x5x3.
HG_CFGS_FWD = [("head 3x12x1", 3, 12, 1), ("torso 1x16x2", 1, 16, 2), ("big 3x16x2", 3, 16, 2), ("test 3x5x3", 3, 5, 3)]
HG_CFGS_BWD = [c for c in HG_CFGS_FWD if c[1] == 3]

COMP = {"sigma_ptr": P, "delta_ptr": P, "values_ptr": P, "start_ptr": "*i64", "count_ptr": "*i32",
        "weights_ptr": P, "opacity_ptr": P, "out_ptr": P, "grad_opacity_ptr": P, "grad_out_ptr": P,
        "grad_sigma_ptr": P, "grad_values_ptr": P, "n_rays": "i32", "max_count": "i32", "min_transmittance": "fp32"}
# CHANNELS: render engine 3 (rgb), trainer 6 (rgb + 3 ambient/uncertainty), tests_gpu 1/4/7.
COMP_CH = [3, 6, 1, 4, 7]

MARCH = {"origins_ptr": P, "dirs_ptr": P, "near_ptr": P, "far_ptr": P, "k0_ptr": "*i32", "occ_ptr": "*u8",
         "t_out_ptr": P, "count_ptr": "*i32", "k_last_ptr": "*i32", "n_rays": "i32", "n_steps": "i32", "dt": "fp32",
         **{k: "fp32" for k in ["box_lo_x", "box_lo_y", "box_lo_z", "box_hi_x", "box_hi_y", "box_hi_z",
                                "inv_cell_x", "inv_cell_y", "inv_cell_z"]}}


def shade_types(wdt: str) -> dict:
    t = {n: f"*{wdt}" for n in ["wa1", "wa2", "we1", "we2", "w1f", "w1a", "w1e", "w2", "w3g", "wcs", "wcg", "wc2"]}
    t.update({"feat_ptr": P, "dirs_ptr": P, "frame_ptr": "*i32", "codes_ptr": P, "expr_ptr": P,
              "w3s": P, "cbias": P, "sigma_ptr": P, "rgb_ptr": P, "n": "i32"})  # sigma_out, colour_bias stay fp32
    return t


# HeadField defaults: pos 3*12*1=36 (pad 64), audio 32, expr 7 (pad 16), hidden 64, geo 64, out pad 16.
SHADE_C = dict(POS=36, POS_P=64, AUD=32, EXP=7, EXP_P=16, H=64, GEO=64, OUT_P=16, MAX_LOG=MAX_LOG_DENSITY,
               BLOCK=st.BLOCK)

JOBS = []
for label, p, l, f in HG_CFGS_FWD:
    JOBS.append(("_hashgrid_fwd_kernel", label, ht._hashgrid_fwd_kernel, HG,
                 dict(NUM_PLANES=p, NUM_LEVELS=l, FEAT=f, BLOCK=ht.BLOCK_POINTS), {}))
for label, p, l, f in HG_CFGS_BWD:
    JOBS.append(("_hashgrid_bwd_kernel", label, ht._hashgrid_bwd_kernel, HG,
                 dict(NUM_PLANES=p, NUM_LEVELS=l, FEAT=f, BLOCK=ht.BLOCK_POINTS), {}))
for label, p, l, f in HG_CFGS_BWD:
    JOBS.append(("_hashgrid_bwd_points_kernel", label, ht._hashgrid_bwd_points_kernel, HG,
                 dict(NUM_PLANES=p, NUM_LEVELS=l, FEAT=f, BLOCK=ht.BLOCK_POINTS), {}))
if not ARGS.hashgrid_only:
    for c in COMP_CH:
        cp = triton.next_power_of_2(c)
        JOBS.append(("_composite_fwd_kernel", f"C={c}", ct._composite_fwd_kernel, COMP,
                     dict(CHANNELS=c, CPAD=cp, BLOCK=ct.BLOCK_RAYS), {}))
        JOBS.append(("_composite_bwd_kernel", f"C={c}", ct._composite_bwd_kernel, COMP,
                     dict(CHANNELS=c, CPAD=cp, BLOCK=ct.BLOCK_RAYS), {}))
    # Occupancy resolution 128; MAX_SAMPLES = march rounds (8, 8, 16) of max_samples 16 (train) / 32 (render).
    for ms in (8, 16):
        JOBS.append(("_march_kernel", f"RES=128 MAX_SAMPLES={ms}", mt._march_kernel, MARCH,
                     dict(RES=128, MAX_SAMPLES=ms, BLOCK=mt.BLOCK_RAYS), {}))
    JOBS.append(("_shade_kernel", "fp32 weights (FUSED_WEIGHT_DTYPE)", st._shade_kernel, shade_types("fp32"),
                 dict(SHADE_C, WDT=tl.float32), {"num_warps": st.NUM_WARPS}))
    JOBS.append(("_shade_kernel", "bf16 weights (not used on CUDA)", st._shade_kernel, shade_types("bf16"),
                 dict(SHADE_C, WDT=tl.bfloat16), {"num_warps": st.NUM_WARPS}))

results = []
for name, label, fn, types, consts, opts in JOBS:
    row = {"kernel": name, "config": label}
    try:
        k = build(fn, types, consts, opts)
        assert "cubin" in k.asm and len(k.asm["cubin"]) > 0
        u = ptxas_usage(k.asm["ptx"])
        if ARGS.dump:  # keep PTX / cubin per (kernel, config) for old-vs-new machine-code diffs
            os.makedirs(ARGS.dump, exist_ok=True)
            stem = os.path.join(ARGS.dump, f"{name}__{label.split()[0]}_{label.split()[-1]}".replace("=", ""))
            open(stem + ".ptx", "w").write(k.asm["ptx"])
            open(stem + ".cubin", "wb").write(k.asm["cubin"])
        row.update(cubin=True, cubin_bytes=len(k.asm["cubin"]), shared=k.metadata.shared,
                   num_warps=k.metadata.num_warps, num_stages=k.metadata.num_stages,
                   regs=u["regs"], spill_stores=u["spill_stores"], spill_loads=u["spill_loads"], stack=u["stack"],
                   cuobjdump=cuobjdump_usage(k.asm["cubin"]), ptx_lines=k.asm["ptx"].count("\n"))
    except Exception as e:  # noqa: BLE001
        row.update(cubin=False, error=f"{type(e).__name__}: {e}", tb=traceback.format_exc())
    results.append(row)
    if row["cubin"]:
        print(f"{name:30s} {label:34s} cubin=yes regs={row['regs']:3d} spills(st/ld)={row['spill_stores']}/"
              f"{row['spill_loads']} stack={row['stack']} smem={row['shared']} warps={row['num_warps']} "
              f"| cuobjdump: {row['cuobjdump']}", flush=True)
    else:
        print(f"{name:30s} {label:34s} cubin=NO  {row['error'][:2000]}", flush=True)

if OUT:
    json.dump(results, open(OUT, "w"), indent=1)
print(f"{sum(r['cubin'] for r in results)}/{len(results)} compiled to cubin for {TARGET}")
