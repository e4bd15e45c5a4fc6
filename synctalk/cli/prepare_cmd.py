"""`synctalk prepare VIDEO -o SUBJECT_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="input video of one person talking to the camera")
    p.add_argument("-o", "--output", type=Path, required=True, help="subject directory to write")
    p.add_argument("--preset", default="default", help="settings preset: default | fast")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                   help="override one setting, e.g. --set decode.size=448 (repeatable)")
    p.add_argument("--force", action="store_true", help="redo every stage even if its outputs are valid")
    p.add_argument("--jobs", type=int, default=None,
                   help="stages to run at once when their inputs are ready (default: number of cores)")
    p.add_argument("--only", nargs="+", metavar="STAGE",
                   help="run only these stages (earlier ones must already be done)")


def run(args: argparse.Namespace) -> int:
    from synctalk.config import apply_overrides
    from synctalk.errors import SyncTalkError
    from synctalk.log import get_logger
    from synctalk.prepare.config import preset
    from synctalk.prepare.pipeline import STAGE_NAMES, prepare

    cfg = apply_overrides(preset(args.preset), args.overrides)
    if args.only:
        unknown = [s for s in args.only if s not in STAGE_NAMES]
        if unknown:
            raise SyncTalkError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    m = prepare(args.video, args.output, cfg, force=args.force, only=tuple(args.only) if args.only else None, jobs=args.jobs)
    log = get_logger("prepare")
    if not m:  # --only stopped before the last stage
        return 0
    stages = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in m["stages"].items())
    log.info("subject %s: %d frames %dx%d @ %g fps, %.1f MiB (%s)", args.output, m["frames"], m["width"],
             m["height"], m["fps"], m["total_bytes"] / 2**20, stages)
    return 0
