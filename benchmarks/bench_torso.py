"""Torso stage benchmark: train the `fast` preset under a trained head, test-split PSNR, render speed.

    python benchmarks/bench_torso.py SUBJECT --workspace WS [--preset fast] [--set FIELD=VALUE ...] [--json OUT]

WS must hold a trained head (head_model / lips_model, as SUBJECT/workspace/nerf); the torso is written
there. Prints a table: load / train seconds, rays/s, peak GPU memory, test PSNR (head+torso+plate vs GT,
head over GT torso vs GT, torso over plate vs torso.mp4) at the model's render scale and at 1.0, and
TorsoModel.render frames/s at 512^2 for batch sizes 1/8/32 and render scales 0.5/1.0 (CUDA-synchronised,
after a warm-up; rendering only, no compositing with the head).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synctalk.log import setup_logging  # noqa: E402
from synctalk.torso.presets import parse_torso_overrides, torso_preset  # noqa: E402
from synctalk.torso.run import finish_torso, setup_torso_training  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_speed(model, c2w: torch.Tensor, ids: torch.Tensor, scales=(0.5, 1.0), batches=(1, 8, 32),
                 seconds: float = 2.0) -> list[dict]:
    rows = []
    base = model.render_scale
    for scale in scales:
        model.set_render_scale(scale)
        for b in batches:
            sel = torch.arange(b, device=c2w.device) % c2w.shape[0]
            for _ in range(3):
                model.render(ids[sel], c2w[sel])
            sync(c2w.device)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model.render(ids[sel], c2w[sel])
                n += 1
            sync(c2w.device)
            elapsed = time.perf_counter() - start
            rows.append({"scale": scale, "batch": b, "fps": n * b / elapsed, "ms_per_batch": 1000 * elapsed / n,
                         "box": [model.box.x0, model.box.y0, model.box.x1, model.box.y1]})
    model.set_render_scale(base)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subject", type=Path)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                    help="also train these variants first (same loaded data; exported under WS/variants/NAME)")
    args = ap.parse_args()
    setup_logging()
    cfg = torso_preset(args.preset, **parse_torso_overrides(args.overrides))
    trainer, work, head_stem, facts = setup_torso_training(args.subject, cfg, workdir=args.workspace)
    device = trainer.device
    variants = []
    for spec in args.variant:
        from synctalk.torso.train import TorsoTrainer

        name, _, items = spec.partition(":")
        v_cfg = torso_preset(args.preset, **{**parse_torso_overrides(args.overrides),
                                             **parse_torso_overrides([i for i in items.split(",") if i])})
        v = TorsoTrainer(trainer.head, trainer.plate, trainer.torso_alpha, v_cfg)
        v_stats = v.train()
        v_summary, _ = finish_torso(v, work / "variants" / name, head_stem, facts, v_stats)
        variants.append({"name": name, "settings": items, "train_s": v_stats["seconds"],
                         **{k: val for k, val in v_summary["test"].items() if k != "per_frame"}})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = trainer.train(on_checkpoint=lambda t: t.save(work / "checkpoints" / "torso_latest"))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    extra = tuple(s for s in (1.0,) if s != cfg.render_scale)
    started = time.perf_counter()
    summary, model = finish_torso(trainer, work, head_stem, facts, stats, extra_scales=extra)
    finish_seconds = time.perf_counter() - started
    data = trainer.data
    ids = data.train_ids[:32]
    speed = render_speed(model, data.c2w[ids], ids)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "preset": args.preset, "overrides": args.overrides, "load_s": facts["load_seconds"],
              "train": stats, "peak_gib_train": peak, "finish_s": finish_seconds,
              "test": {k: v for k, v in summary["test"].items() if k != "per_frame"}, "box": summary["box"],
              "occupied_fraction": summary["occupied_fraction"], "render": speed, "variants": variants}
    t = result["test"]
    print("\n| device | preset | load s | train s | steps | rays/s | peak GiB | export+test s | test frames |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['device']} | {args.preset} {' '.join(args.overrides)} | {facts['load_seconds']:.1f} | "
          f"{stats['seconds']:.1f} | {stats['steps']} | {stats['rays_per_s']:.3g} | {peak:.2f} | {finish_seconds:.1f} | "
          f"{t['frames']} |")
    print("\n| test PSNR (dB) | head+torso+plate vs GT | head over GT torso vs GT | torso over plate vs torso.mp4 |")
    print("|---|---|---|---|")
    print(f"| render scale {cfg.render_scale:g} | {t['psnr']:.2f} | {t['psnr_head_over_gt_torso']:.2f} | {t['psnr_torso']:.2f} |")
    for s in extra:
        print(f"| render scale {s:g} | {t[f'psnr@{s:g}']:.2f} | {t['psnr_head_over_gt_torso']:.2f} | "
              f"{t[f'psnr_torso@{s:g}']:.2f} |")
    for v in variants:
        print(f"| variant {v['name']} ({v['settings']}; train {v['train_s']:.0f} s) | {v['psnr']:.2f} | "
              f"{v['psnr_head_over_gt_torso']:.2f} | {v['psnr_torso']:.2f} |")
    print(f"\n| TorsoModel.render {data.width}x{data.height} | batch | frames/s | ms/batch | box |")
    print("|---|---|---|---|---|")
    for r in speed:
        print(f"| scale {r['scale']:g} | {r['batch']} | {r['fps']:.0f} | {r['ms_per_batch']:.2f} | {r['box']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
