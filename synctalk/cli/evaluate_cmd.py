"""`synctalk evaluate SUBJECT`: test-split metrics per compositing mode + cross-driven lip sync (docs/render.md)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", help="prepared and trained subject directory")
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="cross-driven clip: render the subject speaking it and score lip sync (repeatable)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--out", help="output folder for frames, videos, metrics (default SUBJECT/workspace/eval)")
    p.add_argument("--workspace", help="model folder (default SUBJECT/workspace/nerf)")
    p.add_argument("--modes", default="head,portrait,torso,torso+portrait",
                   help="comma-separated modes (torso modes need a torso model; default: all available)")
    p.add_argument("--lpips-weights", help="torchvision AlexNet weights (.pth): adds LPIPS-alex")
    p.add_argument("--syncnet-weights", help="SyncNet weights: adds LSE-C / LSE-D")
    p.add_argument("--reuse-frames", action="store_true",
                   help="use the renders saved in OUT/frames by an earlier run (e.g. on the GPU machine)")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N test frames")
    p.add_argument("--no-video", action="store_true", help="skip the side-by-side comparison videos")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (default auto)")


def run(args: argparse.Namespace) -> int:
    from synctalk.evaluate import EvaluateOptions, evaluate_subject, format_table
    from synctalk.io.atomic import write_json

    options = EvaluateOptions(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                              lpips_weights=args.lpips_weights, syncnet_weights=args.syncnet_weights,
                              device=args.device, reuse_frames=args.reuse_frames, video=not args.no_video,
                              max_frames=args.max_frames)
    result = evaluate_subject(args.subject, tuple(args.audio), args.out, args.workspace, options)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0
