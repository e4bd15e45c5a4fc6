"""`synctalk train SUBJECT --stage torso` orchestration: frozen head, torso training, export, test split.

Workspace (``SUBJECT/workspace/nerf``, shared with the head):
  checkpoints/torso_latest.{safetensors,json}   full torso training state every ``checkpoint_every`` steps
  checkpoints/torso.{...}                       the same at the end of the stage
  torso_model.{safetensors,json}                inference: field, trained-code mask, occupancy, plate (model.py)
  torso_metrics.json, torso_test/frame_*.png    test split (composite | head over GT torso | GT)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synctalk.io.atomic import write_json
from synctalk.log import get_logger, progress
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.render_views import psnr_of, save_png
from synctalk.nerf.trainer import RayBatch, Trainer, resolve_device
from synctalk.torso.field import TorsoField
from synctalk.torso.model import MODEL_STEM, TorsoModel, export_torso
from synctalk.torso.presets import TorsoConfig
from synctalk.torso.train import TorsoTrainer, load_frozen_head, load_torso_targets

log = get_logger("torso.run")


def workspace(root: str | Path) -> Path:
    return Path(root) / "workspace" / "nerf"


@torch.no_grad()
def build_occupancy(trainer: TorsoTrainer) -> torch.Tensor:
    """bool [G, G]: cells whose alpha exceeds the threshold in some of ``occupancy_frames`` training frames
    (sampled at the cell centres), dilated by ``occupancy_dilate`` cells."""
    c, d, f = trainer.cfg, trainer.data, trainer.field
    g = c.occupancy_resolution
    centres = (torch.arange(g, device=trainer.device, dtype=torch.float32) + 0.5) * 2 / g - 1
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    pixel = f.pixel_terms(torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1))
    ids = d.train_ids[torch.linspace(0, len(d.train_ids) - 1, min(c.occupancy_frames, len(d.train_ids)),
                                     device=trainer.device).round().long()]
    peak = torch.zeros(g * g, device=trainer.device)
    for chunk in ids.split(16):
        frame = f.frame_terms(f.pose_encoding(d.c2w[chunk]), f.codes_of(chunk, trainer.seen))
        peak = torch.maximum(peak, f.render_points(pixel, frame)[..., 0].amax(dim=0))
    occ = (peak > c.occupancy_threshold).float().reshape(1, 1, g, g)
    k = 2 * c.occupancy_dilate + 1
    return (F.max_pool2d(occ, k, stride=1, padding=c.occupancy_dilate)[0, 0] > 0) if c.occupancy_dilate else occ[0, 0] > 0


def model_from_trainer(trainer: TorsoTrainer, occupancy: torch.Tensor) -> TorsoModel:
    """An inference ``TorsoModel`` sharing the trainer's current weights (evaluation before/after export)."""
    field = TorsoField(trainer.field_cfg).to(trainer.device)
    field.load_state_dict(trainer.field.state_dict())
    return TorsoModel(field, trainer.seen, occupancy, trainer.plate, trainer.data.scene,
                      render_scale=trainer.cfg.render_scale, amp=trainer.cfg.amp)


@torch.no_grad()
def render_head(head: Trainer, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen head over the whole frame -> (premultiplied rgb [H, W, 3], opacity [H, W]). Frames the head
    never trained on use individual code 0, as ``render_views.render_frame`` (the original's test path)."""
    d, dev = head.data, head.device
    h, w = d.height, d.width
    fid = torch.tensor([frame], device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=head.autocast):
        codes = head.audio_codes(fid)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    rgb, opacity = torch.empty(h * w, 3, device=dev), torch.empty(h * w, device=dev)
    table = head.field.individual.data
    saved = table[frame].clone()
    if frame not in set(d.train_ids.tolist()):
        table[frame] = table[0]
    try:
        for start in range(0, h * w, head.cfg.chunk_rays):
            sl = slice(start, start + head.cfg.chunk_rays)
            n = xs[sl].shape[0]
            batch = RayBatch(fid.expand(n), torch.zeros(n, dtype=torch.long, device=dev), xs[sl], ys[sl])
            out = head.render_rays(batch, codes, jitter=False)
            opacity[sl] = out["opacity"].float().clamp(0, 1)
            bg = d.bg[frame].reshape(-1, 3)[sl].float() / 255.0
            rgb[sl] = out["rgb"].float() - (1.0 - opacity[sl])[:, None] * bg
    finally:
        table[frame] = saved
    return rgb.reshape(h, w, 3), opacity.reshape(h, w)


@torch.no_grad()
def evaluate_test_split(trainer: TorsoTrainer, model: TorsoModel, save_dir: Path | None,
                        extra_scales: tuple[float, ...] = ()) -> dict:
    """Whole-frame PSNR on the test split of: head + torso + plate (vs GT frame), head over the GT torso
    image (the w/o-torso mode, vs GT frame), torso over plate (vs torso.mp4). ``extra_scales``: also the
    first two at other render scales (``psnr@S``, ``psnr_torso@S``; the model's scale is restored)."""
    c, d = trainer.cfg, trainer.data
    ids = [int(i) for i in d.test_ids.cpu()]
    if c.test_frames is not None and len(ids) > c.test_frames:
        ids = [ids[int(round(k))] for k in np.linspace(0, len(ids) - 1, c.test_frames)]
    rows = []
    for k, frame in enumerate(progress(ids, desc="torso test", total=len(ids), unit="frame")):
        head_rgb, head_alpha = render_head(trainer.head, frame)
        t_rgb, t_alpha = model.render(torch.tensor([frame], device=d.device), d.c2w[frame:frame + 1])
        torso = model.over_background(t_rgb, t_alpha)[0]
        full = (head_rgb + (1.0 - head_alpha)[..., None] * torso).clamp(0, 1)
        torso_gt = d.bg[frame].float() / 255.0
        over_gt_torso = (head_rgb + (1.0 - head_alpha)[..., None] * torso_gt).clamp(0, 1)
        gt = d.gt[frame].float() / 255.0
        row = {"frame": frame, "psnr": psnr_of(full, gt), "psnr_head_over_gt_torso": psnr_of(over_gt_torso, gt),
               "psnr_torso": psnr_of(torso, torso_gt)}
        base_scale = model.render_scale
        for scale in extra_scales:
            model.set_render_scale(scale)
            s_rgb, s_alpha = model.render(torch.tensor([frame], device=d.device), d.c2w[frame:frame + 1])
            s_torso = model.over_background(s_rgb, s_alpha)[0]
            s_full = (head_rgb + (1.0 - head_alpha)[..., None] * s_torso).clamp(0, 1)
            row[f"psnr@{scale:g}"], row[f"psnr_torso@{scale:g}"] = psnr_of(s_full, gt), psnr_of(s_torso, torso_gt)
        if extra_scales:
            model.set_render_scale(base_scale)
        rows.append(row)
        if save_dir is not None and k < c.save_test_images:
            strip = torch.cat([full, over_gt_torso, gt], dim=1)
            save_png(save_dir / f"frame_{frame:05d}.png", (strip * 255 + 0.5).byte().cpu().numpy())
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "frame"} if rows else {}
    return {**mean, "frames": len(rows), "per_frame": rows}


def setup_torso_training(root: str | Path, cfg: TorsoConfig, resume: bool = False,
                         workdir: str | Path | None = None) -> tuple[TorsoTrainer, Path, Path, dict]:
    """Frozen head + data + a (possibly resumed) ``TorsoTrainer`` -> (trainer, workspace, head model, facts)."""
    work = Path(workdir) if workdir is not None else workspace(root)
    latest = work / "checkpoints" / "torso_latest"
    if resume:
        saved = ckpt.load_meta(latest)
        known = set(TorsoConfig.__dataclass_fields__)
        saved_cfg = TorsoConfig(**{k: v for k, v in saved["config"].items() if k in known})
        if saved_cfg != cfg:
            log.warning("--resume: continuing with the torso checkpoint's settings (they differ from this command's)")
        cfg = saved_cfg
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    head, head_stem = load_frozen_head(Path(root), work, device)
    plate, torso_alpha = load_torso_targets(Path(root), head.data)
    facts = {"subject": str(root), "device": str(device), "head_model": head_stem.name,
             "load_seconds": time.perf_counter() - started}
    log.info("frozen head: %s; %d frames %dx%d", head_stem.name, head.data.n_frames, head.data.width, head.data.height)
    trainer = TorsoTrainer(head, plate, torso_alpha, cfg)
    if resume:
        trainer.load(latest)
        log.info("resumed %s at torso step %d", latest, trainer.step)
    return trainer, work, head_stem, facts


def finish_torso(trainer: TorsoTrainer, work: Path, head_stem: Path, facts: dict, stats: dict,
                 extra_scales: tuple[float, ...] = ()) -> tuple[dict, TorsoModel]:
    """Export ``torso_model``, evaluate the test split, write ``torso_metrics.json``; returns (summary, model)."""
    cfg, data = trainer.cfg, trainer.data
    occupancy = build_occupancy(trainer)
    model = model_from_trainer(trainer, occupancy)
    meta = {"field": trainer.field_cfg.to_json(), "config": cfg.to_json(), "scene": data.scene.to_json(),
            "head_model": head_stem.name, "size": [data.height, data.width], "frames": data.n_frames,
            "render_scale": cfg.render_scale, "amp": cfg.amp,
            "box": [model.box.x0, model.box.y0, model.box.x1, model.box.y1]}
    export_torso(work / MODEL_STEM, trainer.field, trainer.seen, occupancy, trainer.plate, meta)
    test = evaluate_test_split(trainer, model, work / "torso_test", extra_scales)
    summary = {**facts, "config": cfg.to_json(), "train": stats, "occupied_fraction": float(occupancy.float().mean()),
               "box": meta["box"], "test": test}
    write_json(work / "torso_metrics.json", summary)
    log.info("test split (%d frames): head+torso+plate %.2f dB, head over GT torso %.2f dB, torso %.2f dB",
             test["frames"], test["psnr"], test["psnr_head_over_gt_torso"], test["psnr_torso"])
    if not math.isfinite(test["psnr"]):
        log.warning("the torso test PSNR is not finite; check torso_test/ renders")
    return summary, model


def train_torso(root: str | Path, cfg: TorsoConfig, resume: bool = False, workdir: str | Path | None = None) -> dict:
    """Train, export and evaluate the torso of a subject whose head is trained; returns the summary (also in
    ``torso_metrics.json``)."""
    trainer, work, head_stem, facts = setup_torso_training(root, cfg, resume, workdir)
    latest = work / "checkpoints" / "torso_latest"
    stats = trainer.train(on_checkpoint=lambda t: t.save(latest))
    trainer.save(work / "checkpoints" / "torso")
    log.info("torso stage: %d steps in %.1f s (%.3g rays/s)", stats["steps"], stats["seconds"], stats["rays_per_s"])
    summary, _ = finish_torso(trainer, work, head_stem, facts, stats)
    return summary
