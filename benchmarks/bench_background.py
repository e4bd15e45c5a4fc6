"""Benchmark the `background` stage: wall/CPU time, peak memory and output sizes.

Usage:
  .venv/bin/python benchmarks/bench_background.py SUBJECT_DIR [--cpus 0,1]

SUBJECT_DIR must hold frames.mp4 and parsing.npz (e.g. a subject prepared up to the parsing stage).
The stage writes background.png, torso.mp4 and torso_alpha.npz into a temporary copy, never into
SUBJECT_DIR. ``--cpus`` pins the process (Linux) to emulate the 2-core target machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path)
    ap.add_argument("--cpus", help="comma-separated CPU ids to pin to, e.g. 0,1")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    from synctalk import subject as S
    from synctalk.prepare import background
    from synctalk.prepare.config import PrepareConfig
    from synctalk.prepare.context import StageContext
    from synctalk.prepare.maskcodec import MaskReader

    with MaskReader(args.subject / S.PARSING) as parsing:
        n, h, w = parsing.shape
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in (S.FRAMES, S.PARSING):
            shutil.copy(args.subject / name, root / name)
        ctx = StageContext(root=root, source=root / S.FRAMES, config=PrepareConfig(),
                           facts={"n_frames": n, "height": h, "width": w, "fps": 25.0})
        wall, cpu = time.perf_counter(), time.process_time()
        facts = background.run(ctx)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sizes = {name: (root / name).stat().st_size for name in (S.BACKGROUND, S.TORSO, S.TORSO_ALPHA)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"frames {n} ({w}x{h}) cpus {len(os.sched_getaffinity(0))}: wall {wall:.2f} s, cpu {cpu:.2f} s, "
          f"{1000 * wall / n:.2f} ms/frame, peak RSS {peak_mb:.0f} MiB")
    print("sizes:", ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items()))
    print("facts:", facts)


if __name__ == "__main__":
    main()
