"""Inference side of the torso: ``load_torso(workspace, device) -> TorsoModel`` and the exported files.

``workspace/torso_model.safetensors``: ``model.*`` (the field), ``trained`` (uint8 [num_codes], 1 where an
individual code was trained), ``occupancy`` (uint8 [G, G], cells where some training frame's alpha was
above the threshold, dilated), ``plate`` (uint8 [H, W, 3], the background the torso was trained over).
``workspace/torso_model.json``: field and training settings, the head's scene transform, the frame size,
the render box and scale (docs/torso.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from synctalk.errors import InputError
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform
from synctalk.torso.field import TorsoField, TorsoFieldConfig

MODEL_STEM = "torso_model"


@dataclass(frozen=True)
class RenderBox:
    """Full-resolution pixel box [x0, x1) x [y0, y1) rendered at ``scale`` (edges on the low-res lattice)."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float

    @property
    def low_size(self) -> tuple[int, int]:
        return (max(1, round((self.y1 - self.y0) * self.scale)), max(1, round((self.x1 - self.x0) * self.scale)))


def occupancy_box(occupancy: torch.Tensor, height: int, width: int, scale: float) -> RenderBox:
    """Bounding box of the occupied cells in pixels, snapped outward so it holds a whole number of
    low-resolution pixels (1/scale full-res pixels each)."""
    g_h, g_w = occupancy.shape
    rows = torch.nonzero(occupancy.any(dim=1)).flatten()
    cols = torch.nonzero(occupancy.any(dim=0)).flatten()
    if rows.numel() == 0:
        return RenderBox(0, 0, 0, 0, scale)
    step = max(1, round(1.0 / scale))
    x0 = int(cols[0]) * width // g_w // step * step
    y0 = int(rows[0]) * height // g_h // step * step
    x1 = min(width, -(-((int(cols[-1]) + 1) * width // g_w) // step) * step)
    y1 = min(height, -(-((int(rows[-1]) + 1) * height // g_h) // step) * step)
    return RenderBox(x0, y0, x1, y1, 1.0 / step)


class TorsoModel:
    """A trained torso, ready to render (module docstring; API in docs/torso.md)."""

    def __init__(self, field: TorsoField, trained: torch.Tensor, occupancy: torch.Tensor, plate: torch.Tensor,
                 scene: SceneTransform, render_scale: float = 0.5, amp: bool = True) -> None:
        self.field = field.eval().requires_grad_(False)
        self.device = plate.device
        self.trained = trained.bool().to(self.device)
        self.occupancy = occupancy.bool().to(self.device)
        self.plate = plate.to(self.device)                       # uint8 [H, W, 3]
        self.plate_float = self.plate.float() / 255.0
        self.scene = scene
        self.height, self.width = int(plate.shape[0]), int(plate.shape[1])
        self.dtype = torch.bfloat16 if (amp and self.device.type == "cuda") else torch.float32
        self.box = occupancy_box(self.occupancy, self.height, self.width, render_scale)
        self._pixel_cache: dict | None = None
        self._occ_mask: torch.Tensor | None = None

    @property
    def render_scale(self) -> float:
        return self.box.scale

    def set_render_scale(self, scale: float) -> None:
        self.box = occupancy_box(self.occupancy, self.height, self.width, scale)
        self._pixel_cache, self._occ_mask = None, None

    def pose_to_nerf(self, c2w_world: torch.Tensor) -> torch.Tensor:
        """pose.npz c2w [B, 4, 4] (world = head frame) -> the NeRF scene coordinates ``render`` expects."""
        out = c2w_world.clone().float()
        offset = torch.tensor(self.scene.offset, device=out.device, dtype=out.dtype)
        out[:, :3, 3] = self.scene.scale * (out[:, :3, 3] - offset)
        return out

    def _pixels(self) -> dict[str, torch.Tensor]:
        if self._pixel_cache is None:
            b = self.box
            h, w = b.low_size
            step = 1.0 / b.scale
            # Low-res pixel j covers full-res [x0 + j*step, x0 + (j+1)*step): its centre in [-1, 1].
            cx = (b.x0 + (torch.arange(w, device=self.device, dtype=torch.float32) + 0.5) * step) * 2 / self.width - 1
            cy = (b.y0 + (torch.arange(h, device=self.device, dtype=torch.float32) + 0.5) * step) * 2 / self.height - 1
            gy, gx = torch.meshgrid(cy, cx, indexing="ij")
            xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
            self._pixel_cache = self.field.pixel_terms(xy)
        return self._pixel_cache

    def _box_occupancy(self) -> torch.Tensor:
        """The occupancy mask resampled (nearest) to the full-res box: alpha is zeroed outside it."""
        if self._occ_mask is None:
            b = self.box
            occ = self.occupancy.float()[None, None]
            full = F.interpolate(occ, size=(self.height, self.width), mode="nearest")[0, 0]
            self._occ_mask = full[b.y0:b.y1, b.x0:b.x1].contiguous()
        return self._occ_mask

    @torch.no_grad()
    def render(self, frame_ids: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_ids [B] (walked training frame ids), c2w [B, 4, 4] in the head's NeRF scene coordinates ->
        rgb [B, H, W, 3] (straight colour, 0 where alpha is 0), alpha [B, H, W]; float32 on the model's device."""
        n = int(frame_ids.shape[0])
        rgb = torch.zeros(n, self.height, self.width, 3, device=self.device)
        alpha = torch.zeros(n, self.height, self.width, device=self.device)
        b = self.box
        if n == 0 or b.x1 <= b.x0 or b.y1 <= b.y0:
            return rgb, alpha
        f = self.field
        codes = f.codes_of(frame_ids.to(self.device), self.trained)
        frame = f.frame_terms(f.pose_encoding(c2w.to(self.device)), codes)
        out = f.render_points(self._pixels(), frame, self.dtype)          # [B, P, 4]
        h, w = b.low_size
        low = out.reshape(n, h, w, 4).permute(0, 3, 1, 2)
        if (h, w) != (b.y1 - b.y0, b.x1 - b.x0):
            low = F.interpolate(low, size=(b.y1 - b.y0, b.x1 - b.x0), mode="bilinear", align_corners=False)
        low = low.permute(0, 2, 3, 1)
        alpha[:, b.y0:b.y1, b.x0:b.x1] = low[..., 0] * self._box_occupancy()
        rgb[:, b.y0:b.y1, b.x0:b.x1] = low[..., 1:] * (alpha[:, b.y0:b.y1, b.x0:b.x1, None] > 0)
        return rgb, alpha

    def over_background(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Torso over the subject's background plate -> [B, H, W, 3]."""
        a = alpha[..., None]
        return rgb * a + (1.0 - a) * self.plate_float


def export_torso(stem: Path, field: TorsoField, trained: torch.Tensor, occupancy: torch.Tensor,
                 plate: torch.Tensor, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in field.state_dict().items()}
    tensors.update({"trained": trained.to(torch.uint8), "occupancy": occupancy.to(torch.uint8),
                    "plate": plate.to(torch.uint8)})
    ckpt.save_checkpoint(stem, tensors, {"kind": "torso", **meta})


def load_torso(workspace: str | Path, device: torch.device | str = "cpu",
               render_scale: float | None = None) -> TorsoModel:
    """Load ``workspace/torso_model.*`` (docs/torso.md). ``InputError`` (one line) when missing/unreadable."""
    stem = Path(workspace) / MODEL_STEM
    if not ckpt.meta_path(stem).is_file():
        raise InputError(f"no torso model in {workspace} (torso_model.json); run `synctalk train SUBJECT --stage torso`")
    tensors, meta = ckpt.load_checkpoint(stem, device)
    if meta.get("kind") != "torso":
        raise InputError(f"{ckpt.meta_path(stem)} is not a torso model")
    try:
        field = TorsoField(TorsoFieldConfig(**meta["field"]))
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        for name in ("pose_mean", "pose_std"):  # models exported before pose standardisation: identity
            state.setdefault(name, getattr(field, name))
        field.load_state_dict(state)
        scene = SceneTransform.from_json(meta["scene"])
        scale = float(meta.get("render_scale", 0.5)) if render_scale is None else render_scale
        model = TorsoModel(field.to(device), tensors["trained"], tensors["occupancy"], tensors["plate"], scene,
                           render_scale=scale, amp=bool(meta.get("amp", True)))
    except (KeyError, TypeError, RuntimeError) as e:
        raise InputError(f"torso model {stem} does not match this version of synctalk ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]}); retrain with --stage torso") from None
    return model
