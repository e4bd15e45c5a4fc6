"""GPU diagnosis of NeRF head quality: where the error sits, and head-stage variants on one loaded subject.

    PYTHONPATH=. python3 benchmarks/bench_train_quality.py --subject .carry/anchor --out "$OUT" \
        [--holdout 0.05] [--analyse .carry/nerf_ws] --variant base: --variant big:rays_per_step=131072,...
    ... --stages head,lips --light --variant base: --lips-variant default: --lips-variant lr01:lips_lr_scale=0.1

``--analyse WORKSPACE`` evaluates an already trained workspace (its ``checkpoints/lips`` or ``head``)
before any variant. Each ``--variant NAME:FIELD=VALUE,...`` trains the head stage from scratch
(``--preset`` plus the overrides) on the same device-resident data. With ``--stages head,lips`` the
head model is evaluated too (row NAME), its full training state is kept, and every ``--lips-variant
LNAME:FIELD=VALUE,...`` (default: one ``default:``) trains the lip stage from that same head state
(row NAME+LNAME, settings = the head's overrides plus its own), so what the lip stage costs or gains is
measured on one head. Every model is reported with its EMA weights and individual code 0 (the
original's test path); ``--light`` keeps only ``val``, ``test`` and ``train16``:
  * ``val``: the held-out last ``--holdout`` share of the train split (not trained on; tune on this);
  * ``test``: every test frame (or ``--test-frames`` evenly spaced ones), whole frame and head only,
    plus where the test error sits (``regions``: share of the squared error and PSNR per region);
  * ``train16``: 16 train frames (fitting vs generalisation);
  * audio ablations on 32 test frames: the mean training audio code for every frame (``mean_audio``)
    and each frame rendered with another test frame's audio (``shuffled_audio``).
The region partition (first match wins): ``mouth`` (lip box), ``seam`` (3-px band around the GT head
mask below the nose tip: jaw / neck), ``edge`` (the band above it: hair / temple outline),
``lower_face`` / ``upper_face`` (head pixels inside the lower-face / face rect), ``hair`` (other head
pixels), ``outside`` (the rest: floaters over the torso and background).
Results are appended to ``$OUT/quality.json`` after every model (a timeout keeps what finished);
mean |error| maps and render|GT pairs are written as PNGs for the first model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGIONS = ("mouth", "seam", "edge", "lower_face", "upper_face", "hair", "outside")
EVAL_MAX_SAMPLES = 0   # --eval-max-samples: samples per ray of every evaluation render (0 = the training setting)
REFINE_ITERS = 0              # --refine-heldout-poses: iterations of the held-out pose fit (0 = none)
ALSO_SAMPLES: list[int] = []  # --also-samples: the test split again at these budgets (row test_sN)
ALT_GT = None                 # --also-gt-halo-px: uint8 targets composited with another halo


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    items = [item for item in rest.split(",") if item]
    if any(item.startswith("gt_halo_px=") for item in items):
        raise SystemExit("the targets are loaded once per process: set the halo with --gt-halo-px")
    return name, items


def region_masks(data, frame: int):
    """Partition of frame ``frame``'s pixels into REGIONS -> [len(REGIONS), H, W] bool."""
    import torch
    import torch.nn.functional as F

    head = data.head[frame].bool()
    h, w = head.shape
    m = head[None, None].float()
    band = (F.max_pool2d(m, 7, 1, 3) > 0) & (-F.max_pool2d(-m, 7, 1, 3) < 1)  # dilated, not eroded
    band = band[0, 0]
    ys, xs = torch.meshgrid(torch.arange(h, device=head.device), torch.arange(w, device=head.device), indexing="ij")

    def box(b):
        return (xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3])

    below_nose = ys >= data.lower_face[frame][1]
    wanted = [box(data.lip_box[frame]), band & below_nose, band, head & box(data.lower_face[frame]),
              head & box(data.face_rect[frame]), head, torch.ones_like(head)]
    taken = torch.zeros_like(head)
    out = []
    for mask in wanted:
        mine = mask & ~taken
        out.append(mine)
        taken |= mine
    return torch.stack(out)


def evaluate(trainer, frames: list[int], regions: bool = False, save_dir: Path | None = None,
             save_first: int = 0, audio_of=None, gt_images=None, max_samples: int | None = None) -> dict:
    """EMA renders of ``frames``: mean PSNR (frame / head) and, with ``regions``, the error split.
    ``audio_of(frame) -> frame`` picks whose audio drives each render (default: its own);
    ``gt_images`` [N, H, W, 3] uint8 replaces the training data's targets as the ground truth;
    ``max_samples`` per ray defaults to --eval-max-samples."""
    import numpy as np
    import torch

    from synctalk.nerf.render_views import psnr_of, render_frame, save_png

    d = trainer.data
    psnr, psnr_head = [], []
    se = torch.zeros(len(REGIONS), device=trainer.device, dtype=torch.float64)
    px = torch.zeros_like(se)
    err_map = torch.zeros(d.height, d.width, device=trainer.device)
    with trainer.ema_weights():
        for k, frame in enumerate(frames):
            pred = render_frame(trainer, frame, audio_frame=None if audio_of is None else audio_of(frame),
                                max_samples=max_samples or EVAL_MAX_SAMPLES or None)
            gt = (d.gt if gt_images is None else gt_images)[frame].float() / 255.0
            psnr.append(psnr_of(pred, gt))
            psnr_head.append(psnr_of(pred, gt, d.head[frame].bool()))
            if regions:
                sq = ((pred - gt) ** 2).sum(dim=-1)
                masks = region_masks(d, frame)
                se += (masks * sq).flatten(1).sum(dim=1).double()
                px += masks.flatten(1).sum(dim=1).double()
                err_map += (pred - gt).abs().mean(dim=-1)
            if save_dir is not None and k < save_first:
                err = ((pred - gt).abs() * 4).clamp(0, 1)
                trio = torch.cat([pred, gt, err], dim=1)
                save_png(save_dir / f"frame_{frame:05d}.png", (trio * 255 + 0.5).byte().cpu().numpy())
    heads = [v for v in psnr_head if math.isfinite(v)]
    result = {"psnr": float(np.mean(psnr)), "psnr_head": float(np.mean(heads)) if heads else float("nan"),
              "frames": len(frames)}
    if regions:
        total = float(se.sum())
        result["regions"] = {
            name: {"error_share": float(se[i]) / total, "pixel_share": float(px[i] / px.sum()),
                   "psnr": 10 * math.log10(3 * float(px[i]) / max(float(se[i]), 1e-12)) if px[i] > 0 else None}
            for i, name in enumerate(REGIONS)}
        result["error_map"] = (err_map / len(frames)).cpu().numpy()
    return result


def report_model(trainer, sets: dict, out: Path | None, light: bool = False, row: dict | None = None,
                 saved=lambda: None) -> dict:
    """Evaluate into ``row``; ``saved()`` is called after each part (a timeout keeps what finished)."""
    import numpy as np
    import torch

    from synctalk.nerf.render_views import save_png

    row = {} if row is None else row
    started = time.perf_counter()
    test = evaluate(trainer, sets["test"], regions=True, save_dir=out, save_first=3 if out else 0)
    err_map = test.pop("error_map")
    if out is not None:
        save_png(out / "test_mean_abs_error_x8.png",
                 np.repeat((np.clip(err_map * 8, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2))
    row["test"] = test
    saved()
    if ALT_GT is not None:   # the same renders against the other ground truth (--also-gt-halo-px)
        row["test_altgt"] = evaluate(trainer, sets["test"], regions=True, gt_images=ALT_GT)
        row["test_altgt"].pop("error_map")
        if sets["val"]:
            row["val_altgt"] = evaluate(trainer, sets["val"], gt_images=ALT_GT)
    for budget in ALSO_SAMPLES:
        row[f"test_s{budget}"] = evaluate(trainer, sets["test"], max_samples=budget)
    if sets["val"]:
        row["val"] = evaluate(trainer, sets["val"], regions=True)
        row["val"].pop("error_map")
    # Fitting vs generalising, per region (train frames render with their learned pose corrections).
    row["train16"] = evaluate(trainer, sets["train16"], regions=True)
    row["train16"].pop("error_map")
    if trainer.poses is not None:
        row["pose_correction_px"] = trainer.poses.pixel_stats()
    saved()
    if REFINE_ITERS:
        # Diagnostic: the held-out frames' poses fitted to their own upper head (nose-tip row up) with
        # the field frozen, then the same frames evaluated again: how much of the gap is pose error.
        from synctalk.nerf.pose_refine import refine_poses

        held_out = sets["test"] + sets["val"]
        had_poses = trainer.poses is not None
        t0 = time.perf_counter()
        row["pose_fit"] = refine_poses(trainer, held_out, iterations=REFINE_ITERS)
        row["pose_fit"]["seconds"] = time.perf_counter() - t0
        row["test_posefit"] = evaluate(trainer, sets["test"], regions=True)
        row["test_posefit"].pop("error_map")
        if sets["val"]:
            row["val_posefit"] = evaluate(trainer, sets["val"])
        if had_poses:   # back to the tracked poses, so a lip stage trained from this state is unaffected
            with torch.no_grad():
                trainer.poses.delta[torch.as_tensor(held_out, device=trainer.device)] = 0
        else:
            trainer.poses = None
    if light:
        row["eval_seconds"] = time.perf_counter() - started
        return row
    test32 = sets["test32"]
    row["test32"] = evaluate(trainer, test32)
    half = len(test32) // 2
    others = {f: test32[(i + half) % len(test32)] for i, f in enumerate(test32)}
    row["test32_shuffled_audio"] = evaluate(trainer, test32, audio_of=others.__getitem__)
    real = trainer.audio_codes
    # Evaluated inside evaluate()'s EMA context, so the mean code comes from the EMA audio nets.
    trainer.audio_codes = lambda frames: real(trainer.data.train_ids).mean(0, keepdim=True).expand(frames.shape[0], -1)
    try:
        row["test32_mean_audio"] = evaluate(trainer, test32)
    finally:
        trainer.audio_codes = real
    row["eval_seconds"] = time.perf_counter() - started
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME:FIELD=VALUE,... (repeatable)")
    ap.add_argument("--analyse", type=Path, default=None, help="a trained workspace to evaluate first")
    ap.add_argument("--holdout", type=float, default=0.05, help="last share of the train split kept out")
    ap.add_argument("--stages", default="head", choices=("head", "head,lips"))
    ap.add_argument("--lips-variant", action="append", default=[],
                    help="LNAME:FIELD=VALUE,... lip stage(s) trained from each head (default: default:)")
    ap.add_argument("--light", action="store_true", help="report val, test and train16 only (faster)")
    ap.add_argument("--test-frames", type=int, default=0, help="0 = every test frame")
    ap.add_argument("--preset", default="fast", help="tiny + --device cpu: a CPU smoke run of this script")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--curve", action="store_true", help="val / test32 PSNR every val_every steps")
    ap.add_argument("--tag", default="quality", help="output file stem (concurrent runs into one --out)")
    ap.add_argument("--eval-max-samples", type=int, default=0,
                    help="samples per ray when evaluating (0 = the training setting, 16; synctalk render uses 32)")
    ap.add_argument("--also-samples", default="", help="comma list: the test split again at these budgets")
    ap.add_argument("--gt-halo-px", type=int, default=0,
                    help="composite_gt halo of the training targets and ground truth (also sets gt_halo_px)")
    ap.add_argument("--also-gt-halo-px", type=int, default=None,
                    help="also score test/val against targets composited with this halo (rows *_altgt)")
    ap.add_argument("--refine-heldout-poses", type=int, default=0,
                    help="after evaluating, fit test/val poses to their upper head for N iterations and evaluate again")
    args = ap.parse_args()
    global EVAL_MAX_SAMPLES, REFINE_ITERS, ALT_GT
    REFINE_ITERS = args.refine_heldout_poses
    EVAL_MAX_SAMPLES = args.eval_max_samples
    ALSO_SAMPLES.extend(int(v) for v in args.also_samples.split(",") if v)

    import torch

    from synctalk.io.atomic import write_text
    from synctalk.log import setup_logging
    from synctalk.nerf import checkpoint as ckpt
    from synctalk.nerf.data import load_subject
    from synctalk.nerf.presets import parse_overrides, preset
    from synctalk.nerf.train_run import _evenly, config_from_checkpoint
    from synctalk.nerf.trainer import Trainer

    setup_logging(False)
    args.out.mkdir(parents=True, exist_ok=True)
    base = preset(args.preset, gt_halo_px=args.gt_halo_px)
    start = time.perf_counter()
    data = load_subject(args.subject, args.device, downscale=base.downscale, max_frames=base.max_frames,
                        scene_fill=base.scene_fill, head_box_margin=base.head_box_margin,
                        gt_halo_px=args.gt_halo_px)
    if args.also_gt_halo_px is not None and args.also_gt_halo_px != args.gt_halo_px:
        other = load_subject(args.subject, args.device, downscale=base.downscale, max_frames=base.max_frames,
                             scene_fill=base.scene_fill, head_box_margin=base.head_box_margin,
                             scene=data.scene, gt_halo_px=args.also_gt_halo_px)
        ALT_GT = other.gt
        del other
    on_gpu = torch.device(args.device).type == "cuda"
    train_ids = data.train_ids.cpu().numpy()
    test_ids = data.test_ids.cpu().numpy()
    n_val = int(round(args.holdout * len(train_ids)))
    sets = {"val": [int(i) for i in train_ids[len(train_ids) - n_val:]] if n_val else [],
            "test": _evenly(test_ids, args.test_frames) if args.test_frames else [int(i) for i in test_ids],
            "test32": _evenly(test_ids, 32), "train16": _evenly(train_ids[:len(train_ids) - n_val], 16)}
    report: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "torch": torch.__version__,
                    "load_seconds": time.perf_counter() - start, "scene": data.scene.to_json(),
                    "holdout_frames": n_val, "stages": args.stages, "models": {}}
    json_path = args.out / f"{args.tag}.json"
    first_pngs = True

    if args.analyse is not None:
        stem = args.analyse / "checkpoints" / "lips"
        if not ckpt.meta_path(stem).is_file():
            stem = args.analyse / "checkpoints" / "head"
        trainer = Trainer(data, config_from_checkpoint(ckpt.load_meta(stem)), "/tmp/quality_analyse")
        trainer.load(stem)
        row = {"checkpoint": str(stem), "note": "trained on the whole train split: val is not held out"}
        row.update(report_model(trainer, sets, args.out / f"{args.tag}_analysed"))
        first_pngs = False
        report["models"]["analysed"] = row
        print(json.dumps({"analysed": row}), flush=True)
        write_text(json_path, json.dumps(report, indent=1))  # atomic: a timeout kill keeps the last json
        del trainer

    if n_val:  # trained variants never see the validation slice
        data.train_ids = data.train_ids[:len(train_ids) - n_val]
    lips_specs = [parse_variant(v) for v in (args.lips_variant or ["default:"])] if "lips" in args.stages else []
    work = Path("/tmp/quality_work") / args.tag

    def finish(name: str, trainer, row: dict) -> None:
        """Evaluate ``trainer`` into ``row``, record it under ``name`` and rewrite the json."""
        nonlocal first_pngs
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
        report["models"][name] = row

        def saved() -> None:
            write_text(json_path, json.dumps(report, indent=1))

        report_model(trainer, sets, args.out / f"{args.tag}_{name}" if first_pngs else None,
                     light=args.light, row=row, saved=saved)
        first_pngs = False
        print(json.dumps({name: row}), flush=True)
        write_text(json_path, json.dumps(report, indent=1))  # atomic: a timeout kill keeps the last json

    def train(trainer, stage: str, row: dict, name: str) -> None:
        def on_validate(t) -> None:  # every val_every steps: a learning curve on val / test32
            point = {"stage": t.stage, "step": t.stage_step, "test32": evaluate(t, sets["test32"])["psnr"]}
            if sets["val"]:
                point["val"] = evaluate(t, sets["val"])["psnr"]
            row["curve"].append(point)
            print(json.dumps({name: point}), flush=True)

        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        stats = trainer.train_stage(stage, on_validate if args.curve else None)
        row["stages"][stage] = {"seconds": stats["seconds"], "steps_per_s": stats["steps_per_s"],
                                "rays_per_s": stats["rays_per_s"]}

    for spec in args.variant:
        name, items = parse_variant(spec)
        trainer = Trainer(data, preset(args.preset, gt_halo_px=args.gt_halo_px, **parse_overrides(items)), work / name)
        row = {"overrides": items, "stages": {}, "curve": []}
        train(trainer, "head", row, name)
        finish(name, trainer, row)
        if lips_specs:
            head_state = work / name / "head"  # every lip variant starts from this exact state
            trainer.save(head_state)
        del trainer
        for lips_name, lips_items in lips_specs:
            both = f"{name}+{lips_name}"
            trainer = Trainer(data, preset(args.preset, gt_halo_px=args.gt_halo_px,
                                          **parse_overrides(items + lips_items)), work / both)
            trainer.load(head_state)
            row = {"head": name, "overrides": items + lips_items, "lips_overrides": lips_items,
                   "stages": {}, "curve": []}
            train(trainer, "lips", row, both)
            finish(both, trainer, row)
            del trainer
        if on_gpu:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
