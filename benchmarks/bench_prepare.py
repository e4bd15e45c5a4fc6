"""Benchmark `synctalk prepare` on the 71-s anchor clip: wall time per stage, peak RSS, subject size.

Usage:  .venv/bin/python benchmarks/bench_prepare.py [VIDEO] [--out DIR] [--keep]
Targets (issue "prepare"): <= 60 s total and <= 4 GB peak RSS on a 2-core CPU; subject <= 25 MiB.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "cnn_anchor_dfrf_71s.mp4"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--out", type=Path, help="subject directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary subject directory")
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()

    os.environ.setdefault("SYNCTALK_NO_PROGRESS", "1")
    sys.path.insert(0, str(REPO))
    from synctalk.log import setup_logging
    from synctalk.prepare.config import preset
    from synctalk.prepare.pipeline import prepare

    setup_logging(False)
    out = args.out or Path(tempfile.mkdtemp(prefix="synctalk-bench-"))
    t0 = time.perf_counter()
    manifest = prepare(args.video, out, preset(args.preset), force=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    rows = [(name, st["seconds"]) for name, st in manifest["stages"].items()]
    print()
    print(f"synctalk prepare benchmark  ({args.video.name}, {manifest['frames']} frames "
          f"{manifest['width']}x{manifest['height']}, preset {args.preset})")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'stage':<14}{'seconds':>10}")
    for name, sec in rows:
        print(f"{name:<14}{sec:>10.2f}")
    print(f"{'total (wall)':<14}{wall:>10.2f}   target <= 60")
    print(f"{'peak RSS':<14}{peak_kib / 2**20:>10.2f} GiB   target <= 4")
    print(f"{'subject size':<14}{manifest['total_bytes'] / 2**20:>10.2f} MiB   target <= 25")
    for name, f in sorted(manifest["files"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"    {name:<28}{f['bytes'] / 2**20:>8.2f} MiB")
    cam = manifest.get("stages", {}).get("pose", {}).get("facts", {}).get("pose", {})
    if cam:
        print("pose: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in cam.items() if not isinstance(v, (list, dict))))
    if args.out is None and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"subject kept at {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
