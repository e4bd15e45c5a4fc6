"""Validation renders: whole frames with the EMA weights, PSNR on the test split, a PSNR curve.

Metrics are reported two ways because the head is composited over the ground-truth torso/background
image (the original's w/o-portrait mode), which inflates full-frame numbers:
  psnr       the whole frame (what the original reports for this mode)
  psnr_head  only pixels the parsing marks as head (face + hair) in the ground truth
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from synctalk.io.atomic import write_bytes
from synctalk.log import get_logger, progress
from synctalk.nerf.trainer import RayBatch, Trainer

log = get_logger("nerf.render")


INDIVIDUAL_CODES = ("code0", "mean", "own")


@torch.no_grad()
def render_frame(trainer: Trainer, frame: int, audio_frame: int | None = None,
                 individual: str = "code0", max_samples: int | None = None) -> torch.Tensor:
    """Render frame ``frame`` (pose, expression, background of that frame; audio of ``audio_frame``,
    default the same frame) with the current weights -> float [H, W, 3] in [0, 1] on the device.

    ``individual`` picks the per-frame appearance code: ``code0`` (the original's test path), ``mean``
    (the mean over the training frames) or ``own`` (the frame's own code; training frames only).
    ``max_samples``: samples per ray (None = the training setting; ``synctalk render`` uses 32)."""
    if individual not in INDIVIDUAL_CODES:
        raise ValueError(f"individual must be one of {INDIVIDUAL_CODES}")
    d = trainer.data
    dev = trainer.device
    h, w = d.height, d.width
    fid = torch.tensor([frame], device=dev)
    codes = trainer.audio_codes(torch.tensor([frame if audio_frame is None else audio_frame], device=dev))
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    out = torch.empty(h * w, 3, device=dev)
    table = trainer.field.individual.data
    # The field reads the code table by frame id, so the frame's row is swapped for the chosen code
    # for the duration of this render and restored afterwards.
    saved = table[frame].clone()
    if individual == "code0":
        table[frame] = table[0]
    elif individual == "mean":
        table[frame] = table[d.train_ids].mean(dim=0)
    try:
        for start in range(0, h * w, trainer.cfg.chunk_rays):
            sl = slice(start, start + trainer.cfg.chunk_rays)
            n = xs[sl].shape[0]
            batch = RayBatch(fid.expand(n), torch.zeros(n, dtype=torch.long, device=dev), xs[sl], ys[sl])
            out[sl] = trainer.render_rays(batch, codes, jitter=False, max_samples=max_samples)["rgb"]
    finally:
        table[frame] = saved
    return out.reshape(h, w, 3).clamp(0.0, 1.0)


def psnr_of(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (pred - gt) ** 2
    if mask is not None:
        if not bool(mask.any()):
            return float("nan")
        diff = diff[mask]
    mse = float(diff.mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate_frames(trainer: Trainer, frames: list[int], save_dir: Path | None = None,
                    save_first: int = 0, individual: str = "code0") -> dict:
    """Render frames with the EMA weights; returns mean PSNRs and per-frame values. The first
    ``save_first`` renders are written as ``frame_XXXXX.png`` (render | ground truth) into ``save_dir``."""
    d = trainer.data
    per_frame = []
    with trainer.ema_weights():
        for k, frame in enumerate(progress(frames, desc="validate", total=len(frames), unit="frame")):
            pred = render_frame(trainer, frame, individual=individual)
            gt = d.gt[frame].float() / 255.0
            head = d.head[frame].bool()
            per_frame.append({"frame": frame, "psnr": psnr_of(pred, gt), "psnr_head": psnr_of(pred, gt, head)})
            if save_dir is not None and k < save_first:
                pair = torch.cat([pred, gt], dim=1)
                save_png(save_dir / f"frame_{frame:05d}.png", (pair * 255 + 0.5).byte().cpu().numpy())
    heads = [r["psnr_head"] for r in per_frame if math.isfinite(r["psnr_head"])]
    return {"psnr": float(np.mean([r["psnr"] for r in per_frame])) if per_frame else float("nan"),
            "psnr_head": float(np.mean(heads)) if heads else float("nan"), "frames": per_frame}


def save_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data.tobytes())


def plot_psnr_curve(history: list[dict], path: Path) -> None:
    """Validation PSNR (whole frame and head only) against the global step, one line per metric."""
    if not history:
        return
    try:
        import matplotlib
    except ImportError:  # the GPU machine has no matplotlib: a plain OpenCV plot instead
        _plot_psnr_curve_cv2(history, path)
        return
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    steps = [r["global_step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [r["psnr"] for r in history], "o-", label="frame")
    ax.plot(steps, [r["psnr_head"] for r in history], "s-", label="head only")
    for r in history:
        if r.get("stage_start"):
            ax.axvline(r["global_step"], color="grey", lw=0.5)
    ax.set_xlabel("step (head, then lips)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buf.getvalue())


def _plot_psnr_curve_cv2(history: list[dict], path: Path, width: int = 600, height: int = 350) -> None:
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    steps = np.array([r["global_step"] for r in history], float)
    series = [(np.array([r["psnr"] for r in history], float), (200, 80, 30)),
              (np.array([r["psnr_head"] for r in history], float), (30, 120, 200))]
    values = np.concatenate([v for v, _ in series])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()) - 1, float(values.max()) + 1) if values.size else (0.0, 1.0)
    x_max = max(float(steps.max()), 1.0)

    def to_px(step: float, value: float) -> tuple[int, int]:
        return int(50 + (width - 70) * step / x_max), int(height - 40 - (height - 70) * (value - lo) / (hi - lo))

    cv2.rectangle(img, (50, 30), (width - 20, height - 40), (0, 0, 0), 1)
    for values_k, colour in series:
        pts = [to_px(s, v) for s, v in zip(steps, values_k) if np.isfinite(v)]
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(img, a, b, colour, 2)
        for p in pts:
            cv2.circle(img, p, 3, colour, -1)
    cv2.putText(img, f"PSNR {lo:.1f}-{hi:.1f} dB; orange frame, blue head; step 0-{int(x_max)}", (50, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    save_png(path, img)
