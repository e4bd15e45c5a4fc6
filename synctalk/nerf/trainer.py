"""Head and lip training of the NeRF head (original-synctalk.md §2.7-2.8), tuned for speed.

One ``Trainer`` owns the field, its AdamW optimiser (beta (0, 0.99); grids at ``lr_grid``, MLPs and
codes at ``lr_net``, the audio attention at 5x ``lr_net`` with weight decay 1e-4), an EMA copy of the
weights, the occupancy grid and the sampling RNG. Everything random is drawn from one
``torch.Generator`` whose state is checkpointed, so ``resume`` continues bit-exactly on the CPU.

Speed choices (vs the original's one image and one Python marching loop per step):
* several images per step; rays drawn mostly inside each frame's head box, the rest anywhere;
* ``march_rays_lattice``: all lattice samples tested against the occupancy grid at once (one sync);
* fused Triton hash-grid / compositing kernels on CUDA, bf16 autocast for the MLPs only;
* all images resident on the device as uint8.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from synctalk.errors import StageError
from synctalk.log import get_logger
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import TrainData
from synctalk.nerf.field import HeadField, HeadFieldConfig
from synctalk.nerf.losses import HeadLossWeights, head_losses, make_perceptual
from synctalk.nerf.pose_refine import PoseCorrection, RowAdam
from synctalk.nerf.presets import TrainConfig, grid_config
from synctalk.nerf.render.composite import composite_packed
from synctalk.nerf.render.occupancy import OccupancyConfig, OccupancyGrid
from synctalk.nerf.render.raymarch import march_rays_lattice

log = get_logger("nerf.train")

SCENE_AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)  # the head is scaled into 0.8 of this (data.py)
STAGES = ("head", "lips")
SWAP_REGIONS = ("face", "lower")  # TrainConfig.swap_audio_region


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError("training was asked to run on CUDA but no GPU is visible; use --device cpu")
    return torch.device(name)


@dataclass
class RayBatch:
    frames: torch.Tensor   # [R] frame id per ray
    slots: torch.Tensor    # [R] index into the step's image list (audio codes)
    xs: torch.Tensor       # [R] pixel column
    ys: torch.Tensor       # [R] pixel row


def loop_summary(stats: dict, start: float, steps: int, rays: int) -> dict:
    """``stats`` (the last progress values) plus the whole loop's wall time and throughput; the head, lip
    and torso training loops report the same keys."""
    elapsed = time.perf_counter() - start
    stats.update({"seconds": elapsed, "steps": steps, "steps_per_s": steps / max(elapsed, 1e-9),
                  "rays_per_s": rays / max(elapsed, 1e-9)})
    return stats


def _in_boxes(boxes: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (xs >= boxes[:, 0]) & (xs < boxes[:, 2]) & (ys >= boxes[:, 1]) & (ys < boxes[:, 3])


def uniform_randint(high: torch.Tensor | int, n: int, rng: torch.Generator) -> torch.Tensor:
    """``n`` integers uniform in [0, high) (``high`` scalar or per-element), drawn from ``rng`` on its device."""
    u = torch.rand(n, device=rng.device, generator=rng)
    return (u * high).long().clamp_max(torch.as_tensor(high, device=rng.device) - 1)


def box_biased_rays(frames: torch.Tensor, boxes: torch.Tensor, rays_per_image: int, box_fraction: float,
                    size: tuple[int, int], rng: torch.Generator) -> RayBatch:
    """``rays_per_image`` pixels of each of ``frames``: a ``box_fraction`` share inside the frame's box
    (``boxes[frame]`` = x0, y0, x1, y1), the rest anywhere in the ``size`` = (H, W) frame. Used by the head
    and torso trainers; the draw order (box coin, then x, then y) is part of bit-exact resume."""
    height, width = size
    slots = torch.arange(frames.shape[0], device=frames.device).repeat_interleave(rays_per_image)
    ray_frames = frames[slots]
    box = boxes[ray_frames]
    in_box = torch.rand(slots.shape[0], device=frames.device, generator=rng) < box_fraction
    x0 = torch.where(in_box, box[:, 0], 0)
    y0 = torch.where(in_box, box[:, 1], 0)
    x1 = torch.where(in_box, box[:, 2], width)
    y1 = torch.where(in_box, box[:, 3], height)
    xs = x0 + uniform_randint(x1 - x0, slots.shape[0], rng)
    ys = y0 + uniform_randint(y1 - y0, slots.shape[0], rng)
    return RayBatch(ray_frames, slots, xs, ys)


class Trainer:
    def __init__(self, data: TrainData, cfg: TrainConfig, workdir: str | Path) -> None:
        if cfg.swap_audio_region not in SWAP_REGIONS:
            raise StageError(f"swap_audio_region must be one of {', '.join(SWAP_REGIONS)}, "
                             f"not {cfg.swap_audio_region!r}")
        self.data, self.cfg, self.workdir = data, cfg, Path(workdir)
        self.device = data.device
        torch.manual_seed(cfg.seed)  # parameter initialisation
        self.field = HeadField(HeadFieldConfig(grid=grid_config(cfg)))
        self.field = self.field.to(self.device)
        self.grid = OccupancyGrid(OccupancyConfig(resolution=cfg.occupancy_resolution, dilate=cfg.occupancy_dilate,
                                                  box_min=SCENE_AABB[:3], box_max=SCENE_AABB[3:]), self.device)
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(cfg.seed)
        self.ema = {k: v.detach().clone() for k, v in self.field.named_parameters()}
        self.optimizer = self._make_optimizer()
        self.stage, self.stage_step = "head", 0
        self.history: list[dict] = []      # validation records (step, stage, psnr...)
        self.loss_weights = HeadLossWeights(cfg.lambda_entropy, cfg.lambda_attention, cfg.lambda_uncertainty)
        self.autocast = cfg.amp and self.device.type == "cuda"
        # Per-feature spread of the training audio: the unit of the audio-noise augmentation.
        self._audio_std = data.audio[data.train_ids].std(dim=0) if cfg.audio_noise > 0 else None
        self._perceptual: torch.nn.Module | None = None
        self.poses: PoseCorrection | None = None
        self._pose_grad_forced = False
        self.pose_optimizer: RowAdam | None = None
        if cfg.pose_refine:
            depth = float(data.c2w[data.train_ids, :3, 3].norm(dim=-1).mean())  # camera to head centre
            self.poses = PoseCorrection(data.n_frames, float(data.intrinsics[0]), depth, data.train_ids)
            self.pose_optimizer = RowAdam(self.poses.delta, cfg.lr_pose)

    # ------------------------------------------------------------------ optimiser
    def _make_optimizer(self) -> torch.optim.Optimizer:
        f, c = self.field, self.cfg
        grid = [f.grid.embeddings]
        att = list(f.audio_att.parameters())
        taken = {id(p) for p in grid + att}
        rest = [p for p in f.parameters() if id(p) not in taken]
        groups = [{"params": grid, "lr": c.lr_grid, "base_lr": c.lr_grid, "weight_decay": c.weight_decay},
                  {"params": rest, "lr": c.lr_net, "base_lr": c.lr_net, "weight_decay": c.weight_decay},
                  {"params": att, "lr": c.lr_net * c.audio_att_lr_mult, "base_lr": c.lr_net * c.audio_att_lr_mult,
                   "weight_decay": c.audio_att_weight_decay}]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, betas=(0.0, 0.99), eps=1e-8, fused=fused)

    def _set_lr(self, stage_steps: int) -> None:
        decay = self.cfg.lr_decay if self.stage == "head" else self.cfg.lips_lr_decay
        factor = decay ** (self.stage_step / max(stage_steps, 1))
        if self.stage == "lips":
            factor *= self.cfg.lips_lr_scale
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        if self.pose_optimizer is not None:
            self.pose_optimizer.lr = self.cfg.lr_pose * factor

    def learning_poses(self) -> bool:
        """Whether renders pass gradients to the camera corrections: in the head stage after the
        warm-up, or inside ``pose_gradients()`` (``pose_refine.refine_poses``)."""
        if self.poses is None:
            return False
        return self._pose_grad_forced or (self.cfg.pose_refine and self.stage == "head" and
                                          self.stage_step >= self.cfg.pose_refine_start * self.cfg.head_steps)

    @contextlib.contextmanager
    def pose_gradients(self) -> Iterator[None]:
        self._pose_grad_forced = True
        try:
            yield
        finally:
            self._pose_grad_forced = False

    def stage_steps(self, stage: str) -> int:
        return self.cfg.head_steps if stage == "head" else self.cfg.lips_steps

    # ------------------------------------------------------------------ EMA
    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.ema_decay
        for k, p in self.field.named_parameters():
            self.ema[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily load the EMA weights (validation and export), then restore the raw ones."""
        backup = {k: p.detach().clone() for k, p in self.field.named_parameters()}
        with torch.no_grad():
            for k, p in self.field.named_parameters():
                p.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.field.named_parameters():
                    p.copy_(backup[k])

    # ------------------------------------------------------------------ rendering
    def audio_codes(self, frames: torch.Tensor) -> torch.Tensor:
        return self.field.encode_audio(self.data.audio_window(frames)).float()

    def training_audio_codes(self, frames: torch.Tensor) -> torch.Tensor:
        """Audio codes for a training step: with ``audio_noise`` > 0 the AVE window gets zero-mean Gaussian
        noise (that many train standard deviations per feature), so the field cannot key frame-specific
        detail on the exact code of a training frame."""
        window = self.data.audio_window(frames)
        if self._audio_std is not None:
            noise = torch.randn(window.shape, device=self.device, generator=self.rng)
            window = window + noise * (self.cfg.audio_noise * self._audio_std)
        return self.field.encode_audio(window).float()

    def expressions_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Expression inputs of frames [R] -> [R, 7] (zeros when the config turns them off)."""
        expr = self.data.expressions[frames]
        return expr if self.cfg.condition_expressions else torch.zeros_like(expr)

    def render_rays(self, batch: RayBatch, codes: torch.Tensor, jitter: bool,
                    max_samples: int | None = None) -> dict[str, torch.Tensor]:
        """Render rays of several frames; ``codes`` [B, 32] are the audio codes of the batch's images.
        ``max_samples``: samples per ray (None = the training setting ``cfg.max_samples``)."""
        d = self.data
        learn_pose = self.learning_poses() and torch.is_grad_enabled()
        correction = None
        if self.poses is not None:
            with torch.set_grad_enabled(learn_pose):
                correction = self.poses.matrices(batch.frames)
        origins, dirs = d.rays(batch.frames, batch.xs, batch.ys, correction)
        j = torch.rand(origins.shape[0], device=self.device, generator=self.rng) if jitter else None
        samples = march_rays_lattice(origins.detach(), dirs.detach(), self.grid, SCENE_AABB, self.cfg.dt,
                                     self.cfg.max_samples if max_samples is None else max_samples,
                                     self.cfg.min_near, j)
        ray_ids = samples.ray_indices
        if learn_pose:
            # The marcher picks sample depths without gradients; the positions are rebuilt from the
            # differentiable rays so the loss reaches the camera corrections.
            dirs_s = dirs.index_select(0, ray_ids)
            samples.positions = origins.index_select(0, ray_ids) + samples.t[:, None] * dirs_s
            samples.directions = dirs_s
        frame_of_sample = batch.frames[ray_ids]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            # index_select (backward: a serial index_add on the CPU) rather than advanced indexing, whose
            # backward accumulates in a thread-order-dependent sum and breaks bit-exact resume.
            out = self.field(samples.positions, samples.directions, codes.index_select(0, batch.slots[ray_ids]),
                             self.expressions_of(frame_of_sample), frame_of_sample)
        audio_att = out["audio_gated_norm"] if self.cfg.attention_on_gated else out["audio_gate_norm"]
        values = torch.stack([out["rgb"][:, 0], out["rgb"][:, 1], out["rgb"][:, 2], audio_att,
                              out["expression_gate_norm"], out["uncertainty"]], dim=-1).float()
        _, opacity, acc = composite_packed(out["sigma"].float(), samples.deltas, values, ray_ids, samples.num_rays)
        bg = d.bg[batch.frames, batch.ys, batch.xs].float() / 255.0
        rgb = acc[:, :3] + (1.0 - opacity)[:, None] * bg
        return {"rgb": rgb, "opacity": opacity, "audio_ambient": acc[:, 3], "expression_ambient": acc[:, 4],
                "uncertainty": acc[:, 5], "samples": torch.tensor(samples.num_samples)}

    def gt_of(self, batch: RayBatch) -> torch.Tensor:
        return self.data.gt[batch.frames, batch.ys, batch.xs].float() / 255.0

    # ------------------------------------------------------------------ sampling
    def _randint(self, high: torch.Tensor | int, n: int) -> torch.Tensor:
        return uniform_randint(high, n, self.rng)

    def _pick_frames(self, n: int) -> torch.Tensor:
        ids = self.data.train_ids
        return ids[self._randint(len(ids), n)]

    def sample_head_rays(self, rays: int | None = None) -> tuple[RayBatch, torch.Tensor]:
        """``rays`` (default ``rays_per_step``) spread over ``images_per_step`` frames, mostly in head boxes."""
        c, d = self.cfg, self.data
        b = c.images_per_step
        frames = self._pick_frames(b)
        per_image = max((c.rays_per_step if rays is None else rays) // b, 1)
        return box_biased_rays(frames, d.head_box, per_image, c.box_ray_fraction, (d.height, d.width),
                               self.rng), frames

    def _box_rays(self, frame: torch.Tensor, box: torch.Tensor, slot: int) -> RayBatch:
        x0, y0, x1, y1 = (int(v) for v in box)
        ys, xs = torch.meshgrid(torch.arange(y0, y1, device=self.device), torch.arange(x0, x1, device=self.device),
                                indexing="ij")
        n = xs.numel()
        return RayBatch(frame.expand(n), torch.full((n,), slot, device=self.device, dtype=torch.long),
                        xs.reshape(-1), ys.reshape(-1))

    def _patch_rays(self, frames: torch.Tensor) -> RayBatch:
        """One patch_size^2 patch per frame, centred uniformly inside the frame's lower-face rect (mouth,
        chin, cheeks: what the lip stage refines) and kept inside the frame; no host sync."""
        c, d = self.cfg, self.data
        ps, n = c.patch_size, frames.shape[0]
        box = d.lower_face[frames]
        span = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], dim=1).clamp_min(1)
        corner = box[:, :2] - ps // 2 + self._randint(span.reshape(-1), 2 * n).reshape(n, 2)
        corner[:, 0].clamp_(0, d.width - ps)
        corner[:, 1].clamp_(0, d.height - ps)
        offs = torch.arange(ps, device=self.device)
        xs = (corner[:, 0, None, None] + offs[None, None, :]).expand(n, ps, ps)
        ys = (corner[:, 1, None, None] + offs[None, :, None]).expand(n, ps, ps)
        slots = torch.arange(n, device=self.device)[:, None, None].expand(n, ps, ps)
        return RayBatch(frames[slots].reshape(-1), slots.reshape(-1), xs.reshape(-1), ys.reshape(-1))

    # ------------------------------------------------------------------ steps
    def _update_occupancy(self) -> None:
        frame = self._pick_frames(1)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            code = self.audio_codes(frame)[0]
            expr = self.expressions_of(frame)[0]
            self.grid.update(lambda p: self.field.density(p, code, expr), generator=self.rng)
        if not bool(torch.isfinite(self.grid.density).all()):
            raise StageError(f"{self.stage} training diverged at step {self.stage_step} (the density field holds "
                             "NaN); resume from the last checkpoint or lower lr_grid / lr_net with --set")

    def head_step(self) -> dict[str, float]:
        batch, frames = self.sample_head_rays()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            codes = self.training_audio_codes(frames)
        out = self.render_rays(batch, codes, jitter=True)
        gt = self.gt_of(batch)
        d = self.data
        in_face = _in_boxes(d.face_rect[batch.frames], batch.xs, batch.ys)
        in_lower = _in_boxes(d.lower_face[batch.frames], batch.xs, batch.ys)
        terms = head_losses(out["rgb"], gt, out["opacity"], out["uncertainty"], out["audio_ambient"],
                            out["expression_ambient"], in_face, in_lower,
                            self.stage_step / max(self.cfg.head_steps, 1), self.loss_weights)
        if self.cfg.swap_audio_rays > 0:
            terms["total"] = terms["total"] + self._swap_audio_opacity()
        self._backward(terms["total"])
        if self.pose_optimizer is not None and self.learning_poses():
            self.pose_optimizer.step(torch.unique(frames))  # rows of this batch; the swap term moves no pose
            self.poses.project_gauge()
        mse = ((out["rgb"].detach() - gt) ** 2).mean()
        return {"loss": terms["total"].detach(), "mse": mse, "rays": batch.xs.shape[0], "samples": out["samples"]}

    def _swap_audio_opacity(self) -> torch.Tensor:
        """``lambda_swap_opacity`` x mean (1 - opacity) over ``swap_audio_rays`` head-step rays that fall in
        the GT face (``swap_audio_region``'s rect and head mask), rendered with the audio of other random
        training frames (drawn after the step's own draws, so the random stream is unchanged when the
        option is off)."""
        c, d = self.cfg, self.data
        rects = d.face_rect if c.swap_audio_region == "face" else d.lower_face
        batch, frames = self.sample_head_rays(c.swap_audio_rays)
        others = self._pick_frames(frames.shape[0])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            codes = self.training_audio_codes(others)
        out = self.render_rays(batch, codes, jitter=True)
        skin = (_in_boxes(rects[batch.frames], batch.xs, batch.ys)
                & d.head[batch.frames, batch.ys, batch.xs].bool()).float()
        return c.lambda_swap_opacity * ((1.0 - out["opacity"]) * skin).sum() / skin.sum().clamp_min(1.0)

    def perceptual(self) -> torch.nn.Module | None:
        if self._perceptual is None and self.cfg.perceptual != "none":
            self._perceptual = make_perceptual(self.cfg.perceptual, self.cfg.perceptual_weights, self.device)
        return self._perceptual

    def lips_step(self) -> dict[str, float]:
        """Alternates a whole lip box of one frame (L1 + 0.01 P) and random patches around the lips of
        several frames (L1 + 0.1 P), P the perceptual distance (original §2.8); with ``lips_anchor_rays``
        plus an L1 term on that many head-stage rays."""
        c, d = self.cfg, self.data
        perceptual = self.perceptual()
        if self.stage_step % 2 == 0:
            frame = self._pick_frames(1)
            batch = self._box_rays(frame[0], d.lip_box[frame[0]], 0)
            box = d.lip_box[frame[0]]
            shape = [(int(box[3] - box[1]), int(box[2] - box[0]))]
            weight, frames = c.lambda_perceptual_box, frame
        else:
            frames = self._pick_frames(c.lip_patches)
            batch = self._patch_rays(frames)
            shape = [(c.patch_size, c.patch_size)] * c.lip_patches
            weight = c.lambda_perceptual_patch
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            codes = self.training_audio_codes(frames)
        out = self.render_rays(batch, codes, jitter=True)
        gt = self.gt_of(batch)
        loss = (out["rgb"] - gt).abs().mean()
        if perceptual is not None:
            h, w = shape[0]
            pred_img = out["rgb"].reshape(len(shape), h, w, 3).permute(0, 3, 1, 2)
            gt_img = gt.reshape(len(shape), h, w, 3).permute(0, 3, 1, 2)
            loss = loss + weight * perceptual(pred_img, gt_img).mean()
        if c.lips_anchor_rays > 0:
            loss = loss + self._anchor_l1()
        self._backward(loss)
        mse = ((out["rgb"].detach() - gt) ** 2).mean()
        return {"loss": loss.detach(), "mse": mse, "rays": batch.xs.shape[0], "samples": out["samples"]}

    def _anchor_l1(self) -> torch.Tensor:
        """Plain L1 on ``lips_anchor_rays`` rays drawn as in a head step (after the lip batch's draws, so
        the lip stage's random stream is unchanged when the option is off)."""
        batch, frames = self.sample_head_rays(self.cfg.lips_anchor_rays)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            codes = self.training_audio_codes(frames)
        out = self.render_rays(batch, codes, jitter=True)
        return (out["rgb"] - self.gt_of(batch)).abs().mean()

    def _backward(self, loss: torch.Tensor) -> None:
        # Checked before the update so a NaN never reaches the weights (one host sync per step, which
        # the marcher's nonzero already costs).
        value = float(loss.detach())
        if not math.isfinite(value):
            raise StageError(f"{self.stage} training diverged at step {self.stage_step} (loss is {value}); "
                             "nothing was saved from this step: resume from the last checkpoint or lower "
                             "lr_grid / lr_net with --set")
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # no ray hit an occupied cell: nothing to learn from this batch
            loss.backward()
            self.optimizer.step()

    # ------------------------------------------------------------------ loop
    def train_stage(self, stage: str, on_validate=None, on_checkpoint=None,
                    stop_at: int | None = None) -> dict[str, float]:
        """Run (or finish) ``stage``; returns rate statistics. Stops with StageError on a NaN loss.
        ``stop_at`` ends the loop early at that stage step, as an interrupted run would (tests, benchmarks)."""
        from synctalk.log import _bars_enabled  # same rule as synctalk.log.progress
        from tqdm.auto import tqdm

        if self.stage != stage:
            self.stage, self.stage_step = stage, 0
        total = self.stage_steps(stage)
        step_fn = self.head_step if stage == "head" else self.lips_step
        bar = tqdm(total=total, initial=self.stage_step, desc=f"train {stage}", unit="step",
                   disable=not _bars_enabled(), dynamic_ncols=True, leave=False)
        rays = 0
        start = time.perf_counter()
        first = self.stage_step
        stats: dict[str, float] = {}
        end = total if stop_at is None else min(total, stop_at)
        while self.stage_step < end:
            if stage == "head" and self.stage_step % self.cfg.occupancy_every == 0:
                self._update_occupancy()
            self._set_lr(total)
            result = step_fn()
            loss = float(result["loss"])
            self.stage_step += 1
            rays += int(result["rays"])
            if self.stage_step % self.cfg.ema_every == 0:
                self._update_ema()
            if self.stage_step % 25 == 0 or self.stage_step == total:
                elapsed = max(time.perf_counter() - start, 1e-9)
                mse = float(result["mse"])
                stats = {"loss": loss, "psnr": -10 * math.log10(max(mse, 1e-12)), "rays_per_s": rays / elapsed,
                         "steps_per_s": (self.stage_step - first) / elapsed}
                bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{stats['psnr']:.2f}", rays_s=f"{stats['rays_per_s']:.3g}")
            bar.update(1)
            if on_validate is not None and (self.stage_step % self.cfg.val_every == 0 or self.stage_step == total):
                on_validate(self)
            if on_checkpoint is not None and (self.stage_step % self.cfg.checkpoint_every == 0
                                              or self.stage_step == total):
                on_checkpoint(self)
        bar.close()
        return loop_summary(stats, start, self.stage_step - first, rays)

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        tensors.update({f"grid.{k}": v for k, v in self.grid.state_dict().items()})
        tensors["rng"] = self.rng.get_state()
        optim, _ = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors.update(optim)
        if self.pose_optimizer is not None:   # poses attached by refine_poses alone are not training state
            tensors["pose.delta"] = self.poses.delta.detach()
            tensors.update({f"pose_optim.{k}": v for k, v in self.pose_optimizer.state_tensors().items()})
        return tensors

    def state_meta(self) -> dict:
        _, groups = ckpt.flatten_optimizer(self.optimizer.state_dict())
        return {"stage": self.stage, "stage_step": self.stage_step, "config": self.cfg.to_json(),
                "scene": self.data.scene.to_json(), "optimizer_groups": groups, "history": self.history,
                "frames": self.data.n_frames, "size": [self.data.height, self.data.width]}

    def save(self, stem: str | Path) -> None:
        ckpt.save_checkpoint(stem, self.state_tensors(), self.state_meta())

    def load(self, stem: str | Path) -> None:
        tensors, meta = ckpt.load_checkpoint(stem, self.device)
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.field.load_state_dict(model)
        self.ema = {k[len("ema."):]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
        self.grid.load_state_dict({k[len("grid."):]: v for k, v in tensors.items() if k.startswith("grid.")})
        self.rng.set_state(tensors["rng"].cpu())
        optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        if self.device.type != "cuda":
            optim = {k: (v.cpu() if k.endswith(".step") else v) for k, v in optim.items()}
        if optim:
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(optim, meta["optimizer_groups"]))
        if self.pose_optimizer is not None and "pose.delta" in tensors:
            with torch.no_grad():
                self.poses.delta.copy_(tensors["pose.delta"])
            self.pose_optimizer.load_state_tensors(
                {k[len("pose_optim."):]: v for k, v in tensors.items() if k.startswith("pose_optim.")})
        self.stage, self.stage_step = meta["stage"], int(meta["stage_step"])
        self.history = list(meta.get("history", []))

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Inference weights: the EMA field plus the occupancy grid (what rendering needs)."""
        tensors = {f"model.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update({f"model.{k}": v for k, v in self.ema.items()})
        tensors.update({f"grid.{k}": v for k, v in self.grid.state_dict().items()})
        if self.poses is not None:   # the renderer applies these to the subject's tracked poses
            tensors["pose.c2w_correction"] = self.poses.c2w_corrections()
        return tensors
