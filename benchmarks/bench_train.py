"""GPU benchmark of `synctalk train`: audio (if missing) + head + lips on a prepared subject.

    PYTHONPATH=. python3 benchmarks/bench_train.py --subject .carry/anchor --out "$OUT" [--preset fast]

Prints one JSON summary: per stage wall time, steps/s, rays/s, peak GPU memory; the test-split PSNR
(head over the ground-truth torso/background, whole frame and head-only pixels). Copies validation
renders, the PSNR curve and metrics.json into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--audio-preset", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--stages", default="head,lips")
    ap.add_argument("--profile", type=int, default=0, help="first profile this many head steps (torch.profiler)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_train_work"), help="training workspace")
    args = ap.parse_args()

    import torch

    from synctalk.log import setup_logging
    from synctalk.nerf.data import AUDIO_FEATURES
    from synctalk.nerf.presets import parse_overrides, preset
    from synctalk.nerf.train_run import train_subject

    setup_logging(False)
    cfg = preset(args.preset, **parse_overrides(args.overrides))
    report: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "preset": args.preset, "overrides": args.overrides}
    if not (args.subject / AUDIO_FEATURES).is_file():
        from synctalk.audio.features import build_subject_audio
        from synctalk.audio.sync_model import preset as audio_preset

        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        facts = build_subject_audio(args.subject, audio_preset(args.audio_preset))
        report["audio"] = {"seconds": time.perf_counter() - start, "facts": facts,
                           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        args.out.mkdir(parents=True, exist_ok=True)
        # Bring the features back so later runs can carry them (the device returns <= 8 flat files).
        for name in ("features.npy", "ave.json"):
            shutil.copy(args.subject / "audio" / name, args.out / f"audio_{name}")
    work = args.work
    if args.profile:
        profile_head_steps(args.subject, cfg, args.profile)
    report["stages"] = {}
    for stage in args.stages.split(","):
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        summary = train_subject(args.subject, cfg, (stage,), workdir=work)
        stats = summary["stages"].get(stage, {})
        report["stages"][stage] = {"wall_seconds": time.perf_counter() - start, "load_seconds": summary["load_seconds"],
                                   "train_seconds": stats.get("seconds"), "steps": stats.get("steps"),
                                   "steps_per_s": stats.get("steps_per_s"), "rays_per_s": stats.get("rays_per_s"),
                                   "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                                   "test_psnr": summary["test"]["psnr"], "test_psnr_head": summary["test"]["psnr_head"],
                                   "test_frames": summary["test"]["frames"]}
        report["history"] = summary["history"]
        print(json.dumps({stage: report["stages"][stage]}), flush=True)
    # Train-frame PSNR with the same renderer separates fitting from generalisation to unseen frames.
    from synctalk.nerf.data import load_subject
    from synctalk.nerf.render_views import evaluate_frames
    from synctalk.nerf.train_run import _evenly
    from synctalk.nerf.trainer import Trainer

    data = load_subject(args.subject, "cuda", scene_fill=cfg.scene_fill, head_box_margin=cfg.head_box_margin)
    trainer = Trainer(data, cfg, work)
    trainer.load(work / "checkpoints" / args.stages.split(",")[-1])
    train_ids = _evenly(data.train_ids.cpu().numpy(), 16)
    test_ids = _evenly(data.test_ids.cpu().numpy(), 32)
    for name, ids, individual in (("train16_code0", train_ids, "code0"), ("train16_own", train_ids, "own"),
                                  ("test32_code0", test_ids, "code0"), ("test32_mean", test_ids, "mean")):
        result = evaluate_frames(trainer, ids, individual=individual)
        report[f"psnr_{name}"] = {"psnr": result["psnr"], "psnr_head": result["psnr_head"], "frames": len(ids)}
        print(json.dumps({name: report[f"psnr_{name}"]}), flush=True)
    # The device returns at most 8 files: the summary, the PSNR curve and a few test renders.
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "psnr_curve.png", args.out / "psnr_curve.png")
    for png in sorted((work / "test").glob("frame_*.png"))[:3]:
        shutil.copy(png, args.out / f"test_{png.name}")
    (args.out / "bench_train.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


def profile_head_steps(subject: Path, cfg, steps: int) -> None:
    """Print where a head step's GPU time goes (after a short warm-up that compiles the kernels)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from synctalk.nerf.data import load_subject
    from synctalk.nerf.trainer import Trainer

    data = load_subject(subject, "cuda", scene_fill=cfg.scene_fill, head_box_margin=cfg.head_box_margin)
    trainer = Trainer(data, cfg, "/tmp/bench_train_profile")
    for _ in range(40):  # compile + let the occupancy grid settle a little
        if trainer.stage_step % cfg.occupancy_every == 0:
            trainer._update_occupancy()
        trainer.head_step()
        trainer.stage_step += 1
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer.head_step()
        torch.cuda.synchronize()
    print(f"profiled {steps} head steps: {(time.perf_counter() - start) / steps * 1e3:.1f} ms/step (profiler on)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    del trainer, data
    torch.cuda.empty_cache()


if __name__ == "__main__":
    raise SystemExit(main())
