"""`synctalk render SUBJECT --audio FILE -o OUT.mp4`: the trained subject speaking any audio (docs/render.md)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", help="prepared and trained subject directory")
    p.add_argument("--audio", help="driving audio: any file FFmpeg decodes (wav, mp3, m4a, a video's track...)")
    p.add_argument("-o", "--output", help="output MP4 (H.264 + AAC); default SUBJECT/renders/<audio name>.mp4")
    p.add_argument("--test", action="store_true", help="render the subject's test split with its own audio")
    p.add_argument("--torso", action="store_true", help="head over the trained torso model (synctalk train --stage torso)")
    p.add_argument("--portrait", action="store_true",
                   help="paste the rendered face back into the original frame (feathered face + neck mask)")
    p.add_argument("--pose", choices=("walk", "fixed"), default="walk",
                   help="walk back and forth along the training poses (default), or hold the first pose")
    p.add_argument("--smoothing", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian smoothing of the walked poses/expressions, sigma in frames (default 0: off)")
    p.add_argument("--blink", choices=("auto", "none"), default="auto",
                   help="auto: the walked frames' blinks; none: eyes held open")
    p.add_argument("--silence", choices=("closed", "natural"), default="closed",
                   help="closed (default): pauses in the audio get the subject's resting closed mouth; natural: "
                        "the mouth the features give, as the original (the subject may breathe open-mouthed)")
    p.add_argument("--frames", metavar="DIR", help="also write every frame as PNG into DIR")
    p.add_argument("--workspace", help="model folder (default SUBJECT/workspace/nerf)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (default auto)")
    p.add_argument("--batch", type=int, default=16, help="frames per render batch (default 16)")
    p.add_argument("--max-samples", type=int, default=32,
                   help="samples per ray (default 32; 0 = the training cap of 16, the exact reference render)")
    p.add_argument("--allow-silent", action="store_true", help="accept an all-silent audio file (closed mouth)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synctalk.errors import InputError
    from synctalk.render import RenderOptions, render_audio

    if not args.test and not args.audio:
        raise InputError("give --audio FILE (or --test to render the test split)")
    out = args.output
    if out is None and args.frames is None:
        name = "test" if args.test else Path(args.audio).stem
        out = str(Path(args.subject) / "renders" / f"{name}.mp4")
    options = RenderOptions(torso=args.torso, portrait=args.portrait, pose=args.pose, smoothing=args.smoothing,
                            blink=args.blink, frames_dir=args.frames, device=args.device, batch=args.batch,
                            test=args.test, allow_silent=args.allow_silent, silence=args.silence,
                            max_samples=args.max_samples if args.max_samples > 0 else None)
    info = render_audio(args.subject, None if args.test else args.audio, out, options, workspace=args.workspace)
    where = info["out"] or info["frames_dir"]
    print(f"{where}: {info['frames']} frames ({info['audio_seconds']:.2f} s of audio, {info['mode']}) "
          f"in {info['seconds']:.1f} s on {info['device']} (load {info['load_model_seconds']:.1f} s, audio + frames "
          f"{info['setup_seconds'] - info['load_model_seconds']:.1f} s, render {info['render_seconds']:.1f} s, "
          f"finish {info['finish_output_seconds']:.1f} s)")
    return 0
