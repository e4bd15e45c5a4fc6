"""`synctalk run VIDEO --audio AUDIO -o OUT.mp4`: prepare, train and render in one command (synctalk/e2e.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, help="talking-head video of one person (a few minutes is best)")
    p.add_argument("--audio", type=Path, required=True,
                   help="driving audio: any file FFmpeg decodes (wav, mp3, m4a, a video's track...)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output MP4 (H.264 + AAC)")
    p.add_argument("--subject", type=Path, default=None,
                   help="subject directory to prepare/train into (default: OUTPUT_DIR/<video name>.synctalk); "
                        "re-running reuses whatever is already done there")
    p.add_argument("--preset", default=None,
                   help="training preset: fast (default with a CUDA GPU) | paper | tiny (default without one)")
    p.add_argument("--audio-preset", default=None, help="audio-encoder preset (default: the one matching --preset)")
    p.add_argument("--prepare-preset", default="default", help="prepare preset: default | fast")
    p.add_argument("--mode", default="torso+portrait", choices=("head", "torso", "portrait", "torso+portrait"),
                   help="how the video is composed (docs/render.md; default torso+portrait)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a training setting, e.g. --set head_steps=3000 or --set torso.steps=2000")
    p.add_argument("--report", type=Path, default=None, help="report JSON (default OUTPUT with .report.json)")


def run(args: argparse.Namespace) -> int:
    from synctalk.e2e import RunOptions, run_pipeline, summary_lines

    opts = RunOptions(preset=args.preset, audio_preset=args.audio_preset, prepare_preset=args.prepare_preset,
                      subject=args.subject, mode=args.mode, device=args.device, overrides=list(args.overrides),
                      report=args.report)
    report = run_pipeline(args.video, args.audio, args.output, opts)
    for line in summary_lines(report):
        print(line)
    return 0
