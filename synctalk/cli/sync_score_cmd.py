"""`synctalk sync-score VIDEO [--audio FILE] [--syncnet WEIGHTS] [--json OUT]`: lip-sync score of a video.

Without ``--syncnet`` it prints the landmark/audio score (needs no weights; ``--method`` picks its
signal pair, see synctalk.audio.av_sync). With it, it also
prints SyncNet LSE-D / LSE-C; no SyncNet weights ship with synctalk or can be downloaded here, so the
user must supply their own ``syncnet_v2.model`` (see docs/audio.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="a 25-fps talking-head video (its own audio track is used)")
    p.add_argument("--audio", type=Path, help="score against this audio file instead of the video's track")
    p.add_argument("--method", choices=("band", "rms"), default="band",
                   help="signals of the landmark score: outer-lip height vs 800-3000 Hz energy (band, default) "
                        "or inner-lip gap vs RMS (rms, the first version)")
    p.add_argument("--syncnet", type=Path, metavar="WEIGHTS",
                   help="also compute LSE-D/LSE-C with YOUR copy of syncnet_python's syncnet_v2.model "
                        "(none ships with synctalk; loaded weights-only, never unpickled)")
    p.add_argument("--device", default="cpu", help="torch device for SyncNet (default cpu)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the full score (per-offset r) as JSON")


def run(args: argparse.Namespace) -> int:
    from synctalk.audio.av_sync import MAX_OFFSET, score_video
    from synctalk.errors import InputError
    from synctalk.io.atomic import write_json

    if not args.video.is_file():
        raise InputError(f"video not found: {args.video}")
    lse = None
    if args.syncnet is not None:
        from synctalk.audio.syncnet_lse import load_syncnet

        load_syncnet(args.syncnet)  # a missing/unsafe weights file fails now, not after the slow scoring
    score = score_video(args.video, args.audio, args.method)
    if args.syncnet is not None:
        from synctalk.audio.syncnet_lse import score_video_lse

        lse = score_video_lse(args.video, args.syncnet, args.audio, device=args.device)
    verdict = "in sync" if score.in_sync() else f"OUT OF SYNC (audio {'late' if score.best_offset > 0 else 'early'})"
    closed = "n/a (no silent stretch)" if score.silent_frames_closed is None else \
        f"{100 * score.silent_frames_closed:.0f} % of {score.silent_frames} silent frames"
    print(f"best offset       {score.best_offset:+d} frames ({40 * score.best_offset:+d} ms, search +-{MAX_OFFSET}): {verdict}")
    print(f"peak correlation  {score.peak_correlation:.3f} (margin over median {score.correlation_margin:.3f}; "
          f"method {score.method})")
    print(f"mouth closed      {closed}")
    if lse is not None:
        print(f"SyncNet LSE-D     {lse.lse_d:.3f} (lower is better)")
        print(f"SyncNet LSE-C     {lse.lse_c:.3f} (higher is better; AV offset {lse.offset:+d} in syncnet_python's sign)")
    if args.json:
        out = {"video": str(args.video), "audio": str(args.audio or args.video), **score.to_json()}
        if lse is not None:
            out["syncnet"] = {"weights": str(args.syncnet), **lse.to_json()}
        write_json(args.json, out)
    return 0
