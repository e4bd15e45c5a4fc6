"""Per-frame camera corrections learned with the head field (photometric pose refinement).

The tracked poses (``pose.npz``) come from face-mesh landmarks and carry sub-pixel to pixel errors.
A NeRF fitted to slightly misplaced views averages them into a softer head, and can key the
per-frame misfit on whatever per-frame input it has (the audio code), which does not transfer to
unseen audio. Here each training frame gets a small rigid correction of its camera, learned from the
same photometric loss as the field (as nerfstudio's camera optimiser or BARF do):

    c2w' = c2w @ [R(w) t; 0 1]        (applied in the camera's own frame)

``delta`` [N, 6] holds w (rotation vector) and t (translation) in *pixel units*: one unit of w turns
the camera by 1/fx rad and one unit of t moves it by depth/fx, i.e. each moves the head's image by
about one pixel, so one learning rate fits both. Frames outside the trained set (test frames, new
audio walks over unseen frames) keep a zero correction.

Gauge: moving every camera the same way is the same as moving the head, so after each update the
mean correction over the trained frames is projected out; the field stays in the tracked frame and
test frames can be rendered with their tracked poses.

Optimiser: a row-sparse Adam (``RowAdam``). Each step only sees the frames of its batch; dense Adam
would keep moving every other row on stale moments (and normalise the tiny gradients the gauge
projection would otherwise give them). Here a row's moments and bias correction advance only when
that frame is in the batch, so every visit moves a row by about ``lr`` pixels at most.
"""

from __future__ import annotations

import torch


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation vectors [R, 3] -> rotation matrices [R, 3, 3] (Rodrigues; exact, smooth at 0)."""
    theta2 = (w * w).sum(dim=-1, keepdim=True)[..., None]               # [R, 1, 1]
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-8
    # sin(t)/t and (1 - cos t)/t^2 with their Taylor series near 0 (no 0/0 in value or gradient).
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero],
                    dim=-1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a * k + b * (k @ k)


class PoseCorrection(torch.nn.Module):
    """Learnable per-frame camera corrections (module docstring) for ``n_frames`` frames."""

    def __init__(self, n_frames: int, focal: float, depth: float, trained: torch.Tensor) -> None:
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros(n_frames, 6, device=trained.device))
        # Pixel units -> radians (rotation) and NeRF units (translation).
        self.register_buffer("unit", torch.tensor([1.0 / focal] * 3 + [depth / focal] * 3, device=trained.device))
        self.register_buffer("trained", trained.clone().long())

    def _all_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame's rotation [N, 3, 3] and translation [N, 3] (camera frame, NeRF units)."""
        d = self.delta * self.unit
        return so3_exp(d[:, :3]), d[:, 3:]

    def matrices(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrections of ``frames`` [R] -> rotation [R, 3, 3] and translation [R, 3] (camera frame).
        The rotations are built once per frame (N rows, far fewer than a batch's rays) and gathered."""
        rot, trans = self._all_matrices()
        return rot.index_select(0, frames), trans.index_select(0, frames)

    @torch.no_grad()
    def c2w_corrections(self) -> torch.Tensor:
        """Every frame's correction as a [N, 4, 4] matrix in NeRF units (c2w' = c2w @ this); what the
        exported model carries so the renderer can apply it without knowing the pixel units."""
        rot, trans = self._all_matrices()
        out = torch.eye(4, device=rot.device).repeat(rot.shape[0], 1, 1)
        out[:, :3, :3], out[:, :3, 3] = rot, trans
        return out

    @torch.no_grad()
    def project_gauge(self) -> None:
        """Remove the mean correction of the trained frames (a global move belongs to the field)."""
        rows = self.delta[self.trained]
        self.delta[self.trained] = rows - rows.mean(dim=0, keepdim=True)

    @torch.no_grad()
    def pixel_stats(self) -> dict[str, float]:
        """Size of the learned corrections in pixels (rotation and translation parts) over trained frames."""
        rows = self.delta[self.trained]
        rot, trans = rows[:, :3].norm(dim=-1), rows[:, 3:].norm(dim=-1)
        return {"rotation_px_median": float(rot.median()), "rotation_px_p95": float(rot.quantile(0.95)),
                "translation_px_median": float(trans.median()), "translation_px_p95": float(trans.quantile(0.95))}


class RowAdam:
    """Adam over the rows of one [N, C] parameter, updating only the rows a step touched (docstring)."""

    def __init__(self, param: torch.nn.Parameter, lr: float, betas: tuple[float, float] = (0.0, 0.9),
                 eps: float = 1e-12) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.count = torch.zeros(param.shape[0], device=param.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, lr: float | None = None) -> None:
        """Update ``rows`` (unique frame ids) from ``param.grad``; other rows stay as they are."""
        grad = self.param.grad
        if grad is None or rows.numel() == 0:
            return
        b1, b2 = self.betas
        g = grad.index_select(0, rows)
        m = self.m.index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
        v = self.v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
        count = self.count.index_select(0, rows) + 1
        m_hat = m / (1 - b1 ** count)[:, None]
        v_hat = v / (1 - b2 ** count)[:, None]
        update = (lr if lr is not None else self.lr) * m_hat / (v_hat.sqrt() + self.eps)
        self.param.index_add_(0, rows, -update)
        self.m.index_copy_(0, rows, m)
        self.v.index_copy_(0, rows, v)
        self.count.index_copy_(0, rows, count)
        self.param.grad = None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"m": self.m, "v": self.v, "count": self.count}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.m.copy_(tensors["m"])
        self.v.copy_(tensors["v"])
        self.count.copy_(tensors["count"])


def refine_poses(trainer, frames: list[int], iterations: int = 300, frames_per_iter: int = 16,
                 rays_per_frame: int = 4096, lr: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Fit the camera corrections of ``frames`` to their images with the field frozen (EMA weights):
    the photometric end of tracking, for frames the field never trained on (test frames, the frames
    of a new render's walk). Only the head above the nose-tip row is compared, so the mouth (what the
    audio should explain) never steers the pose. Returns the final L1 and the corrections' size.

    ``trainer`` is a ``synctalk.nerf.trainer.Trainer``; a ``PoseCorrection`` is attached when it has
    none (a model trained without ``pose_refine``). Rows of the trained frames are left as they are."""
    from synctalk.nerf.trainer import box_biased_rays

    d = trainer.data
    if trainer.poses is None:
        depth = float(d.c2w[d.train_ids, :3, 3].norm(dim=-1).mean())
        trainer.poses = PoseCorrection(d.n_frames, float(d.intrinsics[0]), depth, d.train_ids)
    ids = torch.as_tensor(frames, device=trainer.device, dtype=torch.long)
    optimizer = RowAdam(trainer.poses.delta, lr)
    gen = torch.Generator(device=trainer.device).manual_seed(seed)
    field = trainer.field
    needs = [p.requires_grad for p in field.parameters()]
    field.requires_grad_(False)
    last = float("nan")
    try:
        with trainer.ema_weights(), trainer.pose_gradients():
            for it in range(iterations):
                pick = ids[torch.randperm(len(ids), device=trainer.device, generator=gen)[:frames_per_iter]]
                batch = box_biased_rays(pick, d.head_box, rays_per_frame, 1.0, (d.height, d.width), gen)
                upper = (batch.ys < d.lower_face[batch.frames, 1]).float()
                codes = trainer.audio_codes(pick).detach()
                out = trainer.render_rays(batch, codes, jitter=False)
                err = (out["rgb"] - trainer.gt_of(batch)).abs().mean(dim=-1)
                loss = (err * upper).sum() / upper.sum().clamp_min(1.0)
                loss.backward()
                decay = 0.1 ** (it / max(iterations - 1, 1))   # 1 -> 0.1 over the run
                optimizer.step(torch.unique(pick), lr * decay)
                last = float(loss.detach())
    finally:
        for p, flag in zip(field.parameters(), needs):
            p.requires_grad_(flag)
    rows = trainer.poses.delta.detach()[ids]
    return {"l1_upper_head": last, "rotation_px_median": float(rows[:, :3].norm(dim=-1).median()),
            "translation_px_median": float(rows[:, 3:].norm(dim=-1).median())}
