"""`synctalk train` orchestration: load a subject, run head and/or lip stages, validate, checkpoint.

Workspace layout (``SUBJECT/workspace/nerf`` unless told otherwise):
  checkpoints/latest.{safetensors,json}   full training state, rewritten every ``checkpoint_every`` steps
  checkpoints/{head,lips}.{...}           full state at the end of each stage (resume / lip restarts)
  {head,lips}_model.{safetensors,json}    inference weights: EMA field + occupancy grid + scene transform
  val/<stage>_<step>/frame_*.png          validation renders (render | ground truth)
  psnr_curve.png, metrics.json            validation history and the final test-split PSNR
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from synctalk.errors import InputError
from synctalk.io.atomic import write_json
from synctalk.log import get_logger
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform, load_subject
from synctalk.nerf.presets import TrainConfig
from synctalk.nerf.render_views import evaluate_frames, plot_psnr_curve
from synctalk.nerf.trainer import STAGES, Trainer, resolve_device

log = get_logger("nerf.train")


def workspace(root: str | Path) -> Path:
    return Path(root) / "workspace" / "nerf"


def _evenly(ids: np.ndarray, count: int) -> list[int]:
    if len(ids) <= count:
        return [int(i) for i in ids]
    return [int(ids[int(round(k))]) for k in np.linspace(0, len(ids) - 1, count)]


def train_subject(root: str | Path, cfg: TrainConfig, stages: tuple[str, ...] = STAGES, resume: bool = False,
                  workdir: str | Path | None = None) -> dict:
    """Train ``stages`` (in order) of a prepared subject; returns a summary (also in metrics.json)."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise InputError(f"unknown training stage(s) {bad}; stages are {', '.join(STAGES)}")
    work = Path(workdir) if workdir is not None else workspace(root)
    latest = work / "checkpoints" / "latest"
    scene = None
    if resume:
        meta = ckpt.load_meta(latest)
        saved = config_from_checkpoint(meta)
        if saved != cfg:
            log.warning("--resume: continuing with the checkpoint's settings (they differ from this command's)")
        cfg, scene = saved, SceneTransform.from_json(meta["scene"])
    elif "head" not in stages and ckpt.meta_path(work / "checkpoints" / "head").is_file():
        scene = SceneTransform.from_json(ckpt.load_meta(work / "checkpoints" / "head")["scene"])
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    data = load_subject(root, device, downscale=cfg.downscale, max_frames=cfg.max_frames,
                        head_box_margin=cfg.head_box_margin, scene_fill=cfg.scene_fill, scene=scene,
                        gt_halo_px=cfg.gt_halo_px)
    load_seconds = time.perf_counter() - started
    trainer = Trainer(data, cfg, work)
    if resume:
        trainer.load(latest)
        log.info("resumed %s at %s step %d", latest, trainer.stage, trainer.stage_step)
    elif "head" not in stages:
        # A lip stage on its own starts from the finished head stage of an earlier run.
        head = work / "checkpoints" / "head"
        if not ckpt.meta_path(head).is_file():
            raise InputError(f"no finished head stage in {work}; run `synctalk train {root} --stage head` first")
        trainer.load(head)
    val_ids = _evenly(data.test_ids.cpu().numpy(), cfg.val_frames)

    def global_step(t: Trainer) -> int:
        return t.stage_step + (cfg.head_steps if t.stage == "lips" else 0)

    def on_validate(t: Trainer) -> None:
        out_dir = work / "val" / f"{t.stage}_{t.stage_step:06d}"
        result = evaluate_frames(t, val_ids, out_dir, save_first=2)
        t.history.append({"stage": t.stage, "step": t.stage_step, "global_step": global_step(t),
                          "psnr": result["psnr"], "psnr_head": result["psnr_head"],
                          "stage_start": t.stage_step == 0})
        log.info("%s step %d: validation PSNR %.2f dB (head only %.2f dB) on %d test frames", t.stage,
                 t.stage_step, result["psnr"], result["psnr_head"], len(val_ids))
        plot_psnr_curve(t.history, work / "psnr_curve.png")

    def on_checkpoint(t: Trainer) -> None:
        t.save(latest)

    summary: dict = {"subject": str(root), "device": str(device), "config": cfg.to_json(),
                     "scene": data.scene.to_json(), "load_seconds": load_seconds, "stages": {}}
    order = {s: i for i, s in enumerate(STAGES)}
    for stage in stages:
        if order[trainer.stage] > order[stage] or (trainer.stage == stage
                                                   and trainer.stage_step >= trainer.stage_steps(stage)):
            log.info("%s stage already complete in %s; skipping", stage, latest)
            continue
        stats = trainer.train_stage(stage, on_validate, on_checkpoint)
        trainer.save(work / "checkpoints" / stage)
        ckpt.save_checkpoint(work / f"{stage}_model", trainer.export_tensors(),
                             {"stage": stage, "scene": data.scene.to_json(), "config": cfg.to_json(),
                              "frames": data.n_frames, "size": [data.height, data.width]})
        summary["stages"][stage] = stats
        log.info("%s stage: %d steps in %.1f s (%.1f steps/s, %.3g rays/s)", stage, stats["steps"],
                 stats["seconds"], stats["steps_per_s"], stats["rays_per_s"])
    test = evaluate_frames(trainer, [int(i) for i in data.test_ids.cpu()], work / "test", save_first=3)
    summary["test"] = {"psnr": test["psnr"], "psnr_head": test["psnr_head"], "frames": len(test["frames"])}
    summary["history"] = trainer.history
    log.info("test split: PSNR %.2f dB (head only %.2f dB) over %d frames", test["psnr"], test["psnr_head"],
             len(test["frames"]))
    write_json(work / "metrics.json", summary)
    if summary["stages"] and device.type == "cuda":
        _prime_render_kernels(root, work)
    return summary


def _prime_render_kernels(root: str | Path, work: Path) -> None:
    """Compile the render kernels now, while the user waits for training anyway (synctalk.render.api)."""
    from synctalk.render.api import prime_render_kernels

    try:
        seconds = prime_render_kernels(root, work, device="cuda")
    except Exception as e:  # a convenience: it must never fail a finished training run
        log.warning("could not prepare the render kernels (the first render will compile them): %s", e)
        return
    log.info("render kernels ready for `synctalk render` (%.1f s)", seconds)


def config_from_checkpoint(meta: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in meta["config"].items() if k in known})
