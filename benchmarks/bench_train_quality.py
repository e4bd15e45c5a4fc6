"""GPU diagnosis of NeRF head quality: several head-stage variants on one loaded subject.

    PYTHONPATH=. python3 benchmarks/bench_train_quality.py --subject .carry/anchor --out "$OUT" \
        --variant base: --variant big_table:grid_log2_table_size=16 [--test-frames 0]

Each ``--variant NAME:FIELD=VALUE,FIELD=VALUE`` trains the head stage from scratch (``fast`` preset plus
the overrides) on the same device-resident data, then reports, with the EMA weights:
  * test PSNR (whole frame and head only; individual code 0, the original's test path) on all test
    frames (or ``--test-frames`` evenly spaced ones);
  * the same on 32 test frames with the audio code zeroed (how much the audio conditioning matters);
  * 16 train frames (fitting vs generalisation);
  * the mean image shift render -> ground truth inside the head box (phase correlation), which would
    expose a camera/ray convention or pose offset.
Results are appended to ``$OUT/quality.json`` after every variant, so a timeout keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    return name, [item for item in rest.split(",") if item]


def head_shift(trainer, frames: list[int]) -> dict:
    """Mean (dx, dy) in pixels that moves the render onto the ground truth, inside each head box."""
    import cv2
    import numpy as np

    from synctalk.nerf.render_views import render_frame

    d = trainer.data
    shifts = []
    with trainer.ema_weights():
        for frame in frames:
            pred = render_frame(trainer, frame).mean(dim=-1).cpu().numpy().astype(np.float32)
            gt = (d.gt[frame].float().mean(dim=-1) / 255.0).cpu().numpy().astype(np.float32)
            x0, y0, x1, y1 = (int(v) for v in d.head_box[frame].cpu())
            window = cv2.createHanningWindow((x1 - x0, y1 - y0), cv2.CV_32F)
            (dx, dy), _ = cv2.phaseCorrelate(pred[y0:y1, x0:x1], gt[y0:y1, x0:x1], window)
            shifts.append((dx, dy))
    arr = np.asarray(shifts)
    return {"mean_dx": float(arr[:, 0].mean()), "mean_dy": float(arr[:, 1].mean()),
            "abs_dx": float(np.abs(arr[:, 0]).mean()), "abs_dy": float(np.abs(arr[:, 1]).mean())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME:FIELD=VALUE,... (repeatable)")
    ap.add_argument("--test-frames", type=int, default=0, help="0 = every test frame")
    ap.add_argument("--preset", default="fast", help="tiny + --device cpu: a CPU smoke run of this script")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--save-pngs", type=int, default=2, help="render|GT pairs saved for the first variant")
    args = ap.parse_args()

    import torch

    from synctalk.log import setup_logging
    from synctalk.nerf.data import load_subject
    from synctalk.nerf.presets import parse_overrides, preset
    from synctalk.nerf.render_views import evaluate_frames
    from synctalk.nerf.train_run import _evenly
    from synctalk.nerf.trainer import Trainer

    setup_logging(False)
    args.out.mkdir(parents=True, exist_ok=True)
    base = preset(args.preset)
    start = time.perf_counter()
    data = load_subject(args.subject, args.device, downscale=base.downscale, max_frames=base.max_frames,
                        scene_fill=base.scene_fill, head_box_margin=base.head_box_margin)
    on_gpu = torch.device(args.device).type == "cuda"
    report: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "torch": torch.__version__,
                    "load_seconds": time.perf_counter() - start, "scene": data.scene.to_json(), "variants": {}}
    test_ids = data.test_ids.cpu().numpy()
    test_eval = _evenly(test_ids, args.test_frames) if args.test_frames else [int(i) for i in test_ids]
    test32 = _evenly(test_ids, 32)
    train16 = _evenly(data.train_ids.cpu().numpy(), 16)
    for k, spec in enumerate(args.variant or ["base:"]):
        name, items = parse_variant(spec)
        cfg = preset(args.preset, **parse_overrides(items))
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        trainer = Trainer(data, cfg, Path("/tmp/quality_work") / name)
        stats = trainer.train_stage("head")
        row: dict = {"overrides": items, "train_seconds": stats["seconds"], "steps_per_s": stats["steps_per_s"],
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None}
        save_dir = args.out if k == 0 and args.save_pngs else None
        test = evaluate_frames(trainer, test_eval, save_dir, save_first=args.save_pngs)
        row["test"] = {"psnr": test["psnr"], "psnr_head": test["psnr_head"], "frames": len(test_eval)}
        train = evaluate_frames(trainer, train16)
        row["train16"] = {"psnr": train["psnr"], "psnr_head": train["psnr_head"]}
        real_codes = trainer.audio_codes
        trainer.audio_codes = lambda frames: torch.zeros(frames.shape[0], 32, device=trainer.device)
        muted = evaluate_frames(trainer, test32)
        trainer.audio_codes = real_codes
        row["test32_zero_audio"] = {"psnr": muted["psnr"], "psnr_head": muted["psnr_head"]}
        # Test expressions replaced by the mean training expression (off-distribution blendshapes?).
        saved = data.expressions.clone()
        data.expressions[torch.as_tensor(test32, device=data.device)] = data.expressions[data.train_ids].mean(dim=0)
        mean_expr = evaluate_frames(trainer, test32)
        data.expressions.copy_(saved)
        row["test32_mean_expression"] = {"psnr": mean_expr["psnr"], "psnr_head": mean_expr["psnr_head"]}
        row["test32_shift"] = head_shift(trainer, test32)
        row["train16_shift"] = head_shift(trainer, train16)
        report["variants"][name] = row
        print(json.dumps({name: row}), flush=True)
        (args.out / "quality.json").write_text(json.dumps(report, indent=1))
        del trainer
        if on_gpu:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
