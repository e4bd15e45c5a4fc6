"""Torso training with the head frozen (`synctalk train SUBJECT --stage torso`; docs/torso.md).

Per step: ``images_per_step`` training frames, ``rays_per_step`` pixels (most inside each frame's grown
torso-alpha box). The frozen head (EMA weights of ``lips_model``, else ``head_model``) is rendered for
those pixels with ``Trainer.render_rays`` under ``no_grad``; the torso field is rendered with gradients;
the loss (see ``TorsoTrainer.losses``) trains the torso layer on ``torso.mp4`` everywhere and the full
composite head over torso over plate on the GT frame outside the GT head mask.

Everything random comes from one ``torch.Generator`` whose state is checkpointed, so ``--resume``
continues bit-exactly on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.errors import InputError, StageError
from synctalk.log import get_logger
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform, TrainData, load_subject, mask_boxes
from synctalk.nerf.train_run import config_from_checkpoint
from synctalk.nerf.trainer import RayBatch, Trainer, box_biased_rays, loop_summary, uniform_randint
from synctalk.torso.field import TorsoField, TorsoFieldConfig, binary_entropy, normalised_pixel_centres
from synctalk.torso.presets import TorsoConfig

log = get_logger("torso.train")

HEAD_MODELS = ("lips_model", "head_model")   # the frozen head: lip-refined if it exists


def find_head_model(work: Path) -> Path:
    for name in HEAD_MODELS:
        if ckpt.meta_path(work / name).is_file():
            return work / name
    raise InputError(f"no trained head in {work} (lips_model / head_model); run `synctalk train SUBJECT --stage head` first")


def load_frozen_head(root: Path, work: Path, device: torch.device) -> tuple[Trainer, Path]:
    """The exported head (EMA field + occupancy grid) inside a ``Trainer`` over the subject's data, frozen.
    The data are loaded with the head's frame size, frame count and scene transform."""
    stem = find_head_model(work)
    tensors, meta = ckpt.load_checkpoint(stem, device)
    head_cfg = dataclasses.replace(config_from_checkpoint(meta), device=str(device))
    data = load_subject(root, device, downscale=head_cfg.downscale, max_frames=head_cfg.max_frames,
                        head_box_margin=head_cfg.head_box_margin, scene_fill=head_cfg.scene_fill,
                        scene=SceneTransform.from_json(meta["scene"]), gt_halo_px=head_cfg.gt_halo_px)
    correction = tensors.get("pose.c2w_correction")
    if correction is not None:   # cameras refined with the head (pose_refine): as RenderSession does
        data.c2w = data.c2w @ correction.to(data.c2w)
    head = Trainer(data, dataclasses.replace(head_cfg, pose_refine=False), work)
    head.field.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    head.grid.load_state_dict({k[len("grid."):]: v for k, v in tensors.items() if k.startswith("grid.")})
    head.field.requires_grad_(False).eval()
    return head, stem


def load_torso_targets(root: Path, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
    """Background plate [H, W, 3] uint8 and torso alpha [N, H, W] uint8 (0/1), at the head's frame size."""
    import cv2

    from synctalk.prepare.background import load_plate
    from synctalk.prepare.maskcodec import MaskReader

    sub = S.Subject(root)
    h, w, n = data.height, data.width, data.n_frames
    plate = load_plate(sub.path(S.BACKGROUND))
    if plate.shape[:2] != (h, w):
        plate = cv2.resize(plate, (w, h), interpolation=cv2.INTER_AREA)
    alpha = np.empty((n, h, w), np.uint8)
    with MaskReader(sub.path(S.TORSO_ALPHA)) as reader:
        for i in range(n):
            a = (reader[i] > 127).astype(np.uint8)
            alpha[i] = a if a.shape == (h, w) else cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(plate).to(data.device), torch.from_numpy(alpha).to(data.device)


class TorsoTrainer:
    def __init__(self, head: Trainer, plate: torch.Tensor, torso_alpha: torch.Tensor, cfg: TorsoConfig) -> None:
        self.head, self.data, self.cfg = head, head.data, cfg
        self.device = self.data.device
        self.plate, self.torso_alpha = plate, torso_alpha
        d = self.data
        boxes = mask_boxes(torso_alpha.cpu().numpy().astype(bool), cfg.box_margin)
        boxes = np.round(boxes).astype(np.int64)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, d.width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, d.height)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        self.torso_box = torch.from_numpy(boxes).to(self.device)
        torch.manual_seed(cfg.seed)
        self.field_cfg = TorsoFieldConfig(num_codes=d.n_frames, code_dim=cfg.code_dim, hidden=cfg.hidden,
                                          shrink=cfg.shrink)
        self.field = TorsoField(self.field_cfg).to(self.device)
        if cfg.standardise_pose:
            self.field.set_pose_statistics(d.c2w.index_select(0, d.train_ids))
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(cfg.seed)
        self.seen = torch.zeros(d.n_frames, dtype=torch.bool, device=self.device)
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.autocast = cfg.amp and self.device.type == "cuda"

    def _make_optimizer(self) -> torch.optim.Optimizer:
        f, c = self.field, self.cfg
        nets = list(f.deform.parameters()) + list(f.colour.parameters())
        # Plain Adam (no weight decay): code rows never sampled keep exactly zero, see TorsoField.
        groups = [{"params": [f.grid.table], "lr": c.lr_grid, "base_lr": c.lr_grid},
                  {"params": nets + [f.codes], "lr": c.lr_net, "base_lr": c.lr_net},
                  {"params": [f.anchors], "lr": c.lr_net * 0.1, "base_lr": c.lr_net * 0.1}]
        return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=self.device.type == "cuda")

    def _set_lr(self) -> None:
        factor = self.cfg.lr_decay ** (self.step / max(self.cfg.steps, 1))
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    def _randint(self, high: torch.Tensor | int, n: int) -> torch.Tensor:
        return uniform_randint(high, n, self.rng)

    def sample(self) -> tuple[RayBatch, torch.Tensor]:
        c, d = self.cfg, self.data
        b = c.images_per_step
        frames = d.train_ids[self._randint(len(d.train_ids), b)]
        return box_biased_rays(frames, self.torso_box, c.rays_per_step // b, c.box_ray_fraction,
                               (d.height, d.width), self.rng), frames

    @torch.no_grad()
    def head_layer(self, batch: RayBatch, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen head for the batch's pixels -> (premultiplied rgb [R, 3], opacity [R]). Only pixels inside
        the frame's grown head box (the head stage's ray-sampling box) are rendered with ``head_box_only``:
        the head is taken as transparent elsewhere (its training saw those pixels as background), which
        saves most of the head's cost in a step; by default every sampled pixel is rendered."""
        h, d = self.head, self.data
        if self.cfg.head_box_only:
            box = d.head_box[batch.frames]
            inside = torch.nonzero((batch.xs >= box[:, 0]) & (batch.xs < box[:, 2]) & (batch.ys >= box[:, 1])
                                   & (batch.ys < box[:, 3])).flatten()
        else:
            inside = torch.arange(batch.xs.shape[0], device=self.device)
        rgb = torch.zeros(batch.xs.shape[0], 3, device=self.device)
        opacity = torch.zeros(batch.xs.shape[0], device=self.device)
        if inside.numel() == 0:
            return rgb, opacity
        sub = RayBatch(batch.frames[inside], batch.slots[inside], batch.xs[inside], batch.ys[inside])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=h.autocast):
            codes = h.audio_codes(frames)
        out = h.render_rays(sub, codes, jitter=False)
        torso_gt = d.bg[sub.frames, sub.ys, sub.xs].float() / 255.0
        sub_opacity = out["opacity"].float().clamp(0.0, 1.0)
        opacity[inside] = sub_opacity
        rgb[inside] = out["rgb"].float() - (1.0 - sub_opacity)[:, None] * torso_gt
        return rgb, opacity

    def losses(self, batch: RayBatch, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        c, d, f = self.cfg, self.data, self.field
        head_rgb, head_alpha = self.head_layer(batch, frames)
        xy = normalised_pixel_centres(batch.xs, batch.ys, d.width, d.height)
        pose_enc = f.pose_encoding(d.c2w.index_select(0, frames))
        codes = f.codes.index_select(0, frames)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            out = f(xy, pose_enc, codes, batch.slots)
        alpha, rgb, dx = out["alpha"].float(), out["rgb"].float(), out["dx"].float()
        plate = self.plate[batch.ys, batch.xs].float() / 255.0
        torso_over_plate = rgb * alpha[:, None] + (1.0 - alpha[:, None]) * plate
        torso_gt = d.bg[batch.frames, batch.ys, batch.xs].float() / 255.0
        gt = d.gt[batch.frames, batch.ys, batch.xs].float() / 255.0
        composite = head_rgb + (1.0 - head_alpha)[:, None] * torso_over_plate
        outside_head = (d.head[batch.frames, batch.ys, batch.xs] == 0).float()
        target_alpha = self.torso_alpha[batch.frames, batch.ys, batch.xs].float()
        terms = {
            "torso": (torso_over_plate - torso_gt).abs().mean(),
            "composite": ((composite - gt).abs().mean(dim=-1) * outside_head).sum() / outside_head.sum().clamp_min(1),
            "alpha": (alpha - target_alpha).abs().mean(),
            "entropy": binary_entropy(alpha).mean(),
            "deform": (dx ** 2).sum(dim=-1).mean(),
        }
        terms["total"] = (terms["torso"] + c.lambda_composite * terms["composite"] + c.lambda_alpha * terms["alpha"]
                          + c.lambda_entropy * terms["entropy"] + c.lambda_deform * terms["deform"])
        terms["mse"] = ((composite.detach() - gt) ** 2).mean()
        return terms

    def train_step(self) -> dict[str, torch.Tensor]:
        batch, frames = self.sample()
        self._set_lr()
        terms = self.losses(batch, frames)
        value = float(terms["total"].detach())
        if not math.isfinite(value):
            raise StageError(f"torso training diverged at step {self.step} (loss is {value}); nothing was saved "
                             "from this step: resume from the last checkpoint with a lower lr_grid / lr_net (--set)")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.seen[frames] = True
        self.step += 1
        return terms

    def train(self, on_checkpoint=None, stop_at: int | None = None) -> dict[str, float]:
        """Run (or finish) the torso stage; ``stop_at`` ends early as an interrupted run would (tests)."""
        from tqdm.auto import tqdm

        from synctalk.log import _bars_enabled  # the same rule as synctalk.log.progress

        c = self.cfg
        end = c.steps if stop_at is None else min(c.steps, stop_at)
        bar = tqdm(total=c.steps, initial=self.step, desc="train torso", unit="step", disable=not _bars_enabled(),
                   dynamic_ncols=True, leave=False)
        first, rays, start = self.step, 0, time.perf_counter()
        stats: dict[str, float] = {}
        while self.step < end:
            terms = self.train_step()
            rays += c.rays_per_step // c.images_per_step * c.images_per_step
            if self.step % 25 == 0 or self.step == end:
                elapsed = max(time.perf_counter() - start, 1e-9)
                stats = {"loss": float(terms["total"].detach()), "psnr": -10 * math.log10(max(float(terms["mse"]), 1e-12)),
                         "rays_per_s": rays / elapsed}
                bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.2f}",
                                rays_s=f"{stats['rays_per_s']:.3g}")
            bar.update(1)
            if on_checkpoint is not None and (self.step % c.checkpoint_every == 0 or self.step == c.steps):
                on_checkpoint(self)
        bar.close()
        return loop_summary(stats, start, self.step - first, rays)

    # ------------------------------------------------------------------ state
    def save(self, stem: Path) -> None:
        tensors = {f"model.{k}": v for k, v in self.field.state_dict().items()}
        tensors["rng"] = self.rng.get_state()
        tensors["seen"] = self.seen.to(torch.uint8)
        optim, groups = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors.update(optim)
        ckpt.save_checkpoint(stem, tensors, {"kind": "torso_training", "step": self.step,
                                             "config": self.cfg.to_json(), "field": self.field_cfg.to_json(),
                                             "scene": self.data.scene.to_json(), "optimizer_groups": groups})

    def load(self, stem: Path) -> None:
        tensors, meta = ckpt.load_checkpoint(stem, self.device)
        if meta.get("kind") != "torso_training":
            raise InputError(f"{stem} is not a torso training checkpoint")
        self.field.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self.rng.set_state(tensors["rng"].cpu())
        self.seen = tensors["seen"].bool()
        optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        if self.device.type != "cuda":
            optim = {k: (v.cpu() if k.endswith(".step") else v) for k, v in optim.items()}
        if optim:
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(optim, meta["optimizer_groups"]))
        self.step = int(meta["step"])
