"""`synctalk sync-score VIDEO [--audio FILE] [--json OUT]`: offline lip-sync score of a talking video."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="a 25-fps talking-head video (its own audio track is used)")
    p.add_argument("--audio", type=Path, help="score against this audio file instead of the video's track")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the full score (per-offset r) as JSON")


def run(args: argparse.Namespace) -> int:
    from synctalk.audio.av_sync import MAX_OFFSET, score_video
    from synctalk.errors import InputError
    from synctalk.io.atomic import write_json

    if not args.video.is_file():
        raise InputError(f"video not found: {args.video}")
    score = score_video(args.video, args.audio)
    verdict = "in sync" if score.in_sync() else f"OUT OF SYNC (audio {'late' if score.best_offset > 0 else 'early'})"
    closed = "n/a (no silent stretch)" if score.silent_frames_closed is None else \
        f"{100 * score.silent_frames_closed:.0f} % of {score.silent_frames} silent frames"
    print(f"best offset       {score.best_offset:+d} frames ({40 * score.best_offset:+d} ms, search +-{MAX_OFFSET}): {verdict}")
    print(f"peak correlation  {score.peak_correlation:.3f} (margin over median {score.correlation_margin:.3f})")
    print(f"mouth closed      {closed}")
    if args.json:
        write_json(args.json, {"video": str(args.video), "audio": str(args.audio or args.video), **score.to_json()})
    return 0
