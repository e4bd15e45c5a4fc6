"""Benchmark the `decode` stage: wall/CPU time, frames.mp4 size and PSNR against the decoded source.

Usage:
  .venv/bin/python benchmarks/bench_decode.py [VIDEO]              # decode.run with the default config
  .venv/bin/python benchmarks/bench_decode.py [VIDEO] --sweep      # also sweep x264 crf x preset

PSNR is over all pixels of all frames (RGB, 8 bit), frames.mp4 vs the source decoded by PyAV; it only
makes sense for a size x size, 25 fps source (no crop, no resampling), like the anchor clip.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "cnn_anchor_dfrf_71s.mp4"


def psnr_against_source(encoded: Path, source: Path) -> float:
    from synctalk.io.video import iter_frames

    se, n = 0.0, 0
    for a, b in zip(iter_frames(encoded), iter_frames(source)):
        d = a.astype(np.int16) - b.astype(np.int16)
        se += float(np.einsum("ijk,ijk->", d, d, dtype=np.int64))
        n += d.size
    mse = se / max(n, 1)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_decode(video: Path, root: Path, **overrides) -> tuple[dict, float, float]:
    from synctalk.prepare import decode
    from synctalk.prepare.config import PrepareConfig
    from synctalk.prepare.context import StageContext

    cfg = PrepareConfig()
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **overrides))
    cpu0, t0 = time.process_time(), time.perf_counter()
    facts = decode.run(StageContext(root=root, source=video, config=cfg))
    return facts, time.perf_counter() - t0, time.process_time() - cpu0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--sweep", action="store_true", help="sweep crf and x264 preset")
    args = ap.parse_args()
    os.environ.setdefault("SYNCTALK_NO_PROGRESS", "1")
    sys.path.insert(0, str(REPO))

    with tempfile.TemporaryDirectory(prefix="synctalk-bench-decode-") as tmp:
        root = Path(tmp)
        facts, wall, cpu = run_decode(args.video, root)
        size = (root / "frames.mp4").stat().st_size
        print(f"decode.run default: {facts['n_frames']} frames, wall {wall:.2f} s, cpu {cpu:.2f} s "
              f"(this process, encoder threads included), frames.mp4 {size / 2**20:.2f} MiB, "
              f"audio.wav {(root / 'audio.wav').stat().st_size / 2**20:.2f} MiB, cores {os.cpu_count()}")
        if facts["crop"] is None and facts["source"]["fps"] == facts["fps"]:
            print(f"  PSNR frames.mp4 vs source: {psnr_against_source(root / 'frames.mp4', args.video):.2f} dB")
        if args.sweep:
            print("preset     crf  wall_s  cpu_s   MiB   PSNR_dB")
            for preset in ("ultrafast", "superfast", "veryfast"):
                for crf in (14, 16, 18, 20):
                    _, wall, cpu = run_decode(args.video, root, crf=crf, x264_preset=preset)
                    size = (root / "frames.mp4").stat().st_size / 2**20
                    psnr = psnr_against_source(root / "frames.mp4", args.video)
                    print(f"{preset:10s} {crf:3d}  {wall:6.2f}  {cpu:5.2f}  {size:5.2f}  {psnr:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
