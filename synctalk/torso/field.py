"""The torso field: a 2-D, pose-conditioned deformable colour + alpha field over image coordinates
(original-synctalk.md §2.6, ER-NeRF's ``forward_torso``; our own implementation).

    x_s  = shrink * x                                    x: pixel centre in [-1, 1]^2 (x right, y down)
    pose = freq(project(anchors, inverse(c2w)))          3 learnable anchors -> 6 numbers -> 42 dims
    h    = [freq(x_s) | pose | code]                     34 + 42 + code_dim
    x'   = clamp(x_s + deform_mlp(h), -1, 1)
    a, c = sigmoid(colour_mlp([grid(x') | h]))           alpha, rgb

Inference (``render_points``) uses that the pixel encoding is the same for every frame and the pose and
code are the same for every pixel of a frame: the first layer of each MLP splits into a per-pixel part
(precomputed once per pixel set) and a per-frame bias, so a frame costs two 32x32 layers, one 32->2,
one 32->4 and the grid lookup per pixel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from synctalk.torso.grid2d import TORSO_GRID, HashGrid2D

DEFAULT_ANCHORS = ((0.01, 0.01, 0.1), (-0.1, -0.1, 0.1), (0.1, -0.1, 0.1))  # the original's initial anchors


@dataclass(frozen=True)
class TorsoFieldConfig:
    num_codes: int                 # individual codes: one per subject frame
    code_dim: int = 8
    hidden: int = 32
    shrink: float = 0.8
    pixel_octaves: int = 8
    pose_octaves: int = 3

    def to_json(self) -> dict:
        return asdict(self)


def freq_encode(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """[..., D] -> [..., D + 2*D*octaves]: x, then sin/cos(2^k x) (ER-NeRF's FreqEncoder, no pi)."""
    parts = [x]
    for k in range(octaves):
        scaled = x * (2.0 ** k)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, dim=-1)


def freq_dim(d: int, octaves: int) -> int:
    return d + 2 * d * octaves


class TorsoField(nn.Module):
    def __init__(self, cfg: TorsoFieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hid = cfg.hidden
        self.anchors = nn.Parameter(torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32))
        # Standardisation of the projected anchors (set from the training poses, see set_pose_statistics):
        # raw x/z, y/z have a std of 0.012-0.025 over the anchor subject, too little for the encoding to carry pose.
        self.register_buffer("pose_mean", torch.zeros(6))
        self.register_buffer("pose_std", torch.ones(6))
        # Zero init: codes of frames never sampled stay exactly zero (plain Adam, no weight decay); the
        # trainer also records the sampled frames, which the export stores as the "trained" mask.
        self.codes = nn.Parameter(torch.zeros(cfg.num_codes, cfg.code_dim))
        self.pixel_dim = freq_dim(2, cfg.pixel_octaves)
        self.pose_dim = freq_dim(6, cfg.pose_octaves)
        self.cond_dim = self.pixel_dim + self.pose_dim + cfg.code_dim
        self.deform = nn.Sequential(nn.Linear(self.cond_dim, hid), nn.ReLU(), nn.Linear(hid, hid), nn.ReLU(),
                                    nn.Linear(hid, 2))
        self.grid = HashGrid2D(TORSO_GRID)
        self.colour = nn.Sequential(nn.Linear(self.grid.output_dim + self.cond_dim, hid), nn.ReLU(),
                                    nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, 4))
        # Start with no deformation: the field first learns the mean torso, then how it moves.
        nn.init.zeros_(self.deform[-1].weight)
        nn.init.zeros_(self.deform[-1].bias)

    # ------------------------------------------------------------------ conditioning
    def projected_anchors(self, c2w: torch.Tensor) -> torch.Tensor:
        """c2w [B, 4, 4] (NeRF scene coordinates of the head) -> [B, 6]: the anchors seen from the camera,
        perspective-divided (x/z, y/z)."""
        w2c = torch.linalg.inv(c2w.float())
        pts = self.anchors[None] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]   # [B, 3, 3]
        z = pts[..., 2:3]
        # z is negative (the camera looks down -z); keep it away from 0 so a stray anchor cannot blow up.
        z = torch.where(z.abs() < 1e-3, torch.full_like(z, -1e-3), z)
        return (pts[..., :2] / z).reshape(c2w.shape[0], 6)

    @torch.no_grad()
    def set_pose_statistics(self, c2w: torch.Tensor) -> None:
        """Standardise the projected anchors over the training poses c2w [T, 4, 4] (once, before training)."""
        raw = self.projected_anchors(c2w)
        self.pose_mean.copy_(raw.mean(dim=0))
        self.pose_std.copy_(raw.std(dim=0).clamp_min(1e-6) if raw.shape[0] > 1 else torch.ones(6, device=raw.device))

    def pose_encoding(self, c2w: torch.Tensor) -> torch.Tensor:
        """c2w [B, 4, 4] -> [B, pose_dim]: standardised projected anchors, frequency-encoded."""
        standard = (self.projected_anchors(c2w) - self.pose_mean) / self.pose_std
        return freq_encode(standard, self.cfg.pose_octaves)

    def codes_of(self, frame_ids: torch.Tensor, trained: torch.Tensor | None = None) -> torch.Tensor:
        """Individual codes [B, code_dim]; ids out of range or never trained get the trained mean."""
        ids = frame_ids.long()
        inside = (ids >= 0) & (ids < self.cfg.num_codes)
        safe = torch.where(inside, ids, torch.zeros_like(ids))
        codes = self.codes.index_select(0, safe)
        if trained is None:
            return torch.where(inside[:, None], codes, torch.zeros_like(codes))
        known = inside & trained.index_select(0, safe)
        mean = self.codes[trained].mean(dim=0) if bool(trained.any()) else torch.zeros_like(self.codes[0])
        return torch.where(known[:, None], codes, mean[None].expand_as(codes))

    # ------------------------------------------------------------------ training path (per ray)
    def forward(self, xy: torch.Tensor, pose_enc: torch.Tensor, codes: torch.Tensor,
                slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """xy [R, 2] pixel centres in [-1, 1]; pose_enc [B, pose_dim] and codes [B, code_dim] per image;
        slots [R] the image of each ray -> alpha [R], rgb [R, 3], dx [R, 2]."""
        xs = xy * self.cfg.shrink
        cond = torch.cat([freq_encode(xs, self.cfg.pixel_octaves), pose_enc.index_select(0, slots),
                          codes.index_select(0, slots)], dim=-1)
        dx = self.deform(cond)
        warped = (xs + dx).clamp(-1.0, 1.0)
        out = self.colour(torch.cat([self.grid(warped), cond], dim=-1))
        return {"alpha": _squash(out[:, 0]), "rgb": _squash(out[:, 1:]), "dx": dx}

    # ------------------------------------------------------------------ inference path (per frame)
    @torch.no_grad()
    def pixel_terms(self, xy: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame-independent part of a pixel set (cache it): shrunk coords and both first-layer products."""
        xs = xy.float() * self.cfg.shrink
        enc = freq_encode(xs, self.cfg.pixel_octaves)
        p = self.pixel_dim
        w_def = self.deform[0].weight[:, :p]
        w_col = self.colour[0].weight[:, self.grid.output_dim:self.grid.output_dim + p]
        return {"xs": xs, "deform": enc @ w_def.T, "colour": enc @ w_col.T}

    @torch.no_grad()
    def frame_terms(self, pose_enc: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame first-layer biases [B, hidden] of both MLPs."""
        p, g = self.pixel_dim, self.grid.output_dim
        rest = torch.cat([pose_enc, codes], dim=-1)
        deform = rest @ self.deform[0].weight[:, p:].T + self.deform[0].bias
        colour = rest @ self.colour[0].weight[:, g + p:].T + self.colour[0].bias
        return {"deform": deform, "colour": colour}

    @torch.no_grad()
    def render_points(self, pixel: dict[str, torch.Tensor], frame: dict[str, torch.Tensor],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All pixels of ``pixel`` for every frame of ``frame`` -> [B, P, 4] (alpha, rgb) in float32.
        ``dtype`` is the MLP compute type (bf16 on CUDA); the grid lookup and coordinates stay fp32."""
        b, n = frame["deform"].shape[0], pixel["xs"].shape[0]
        d1 = torch.relu(pixel["deform"].to(dtype)[None] + frame["deform"].to(dtype)[:, None])
        d2 = torch.relu(self._linear(self.deform[2], d1, dtype))
        dx = self._linear(self.deform[4], d2, dtype).float()
        warped = (pixel["xs"][None] + dx).clamp(-1.0, 1.0).reshape(b * n, 2)
        feats = self.grid(warped).reshape(b, n, -1).to(dtype)
        w_grid = self.colour[0].weight[:, :self.grid.output_dim].to(dtype)
        c1 = torch.relu(feats @ w_grid.T + pixel["colour"].to(dtype)[None] + frame["colour"].to(dtype)[:, None])
        c2 = torch.relu(self._linear(self.colour[2], c1, dtype))
        return _squash(self._linear(self.colour[4], c2, dtype).float())

    @staticmethod
    def _linear(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.nn.functional.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))


def _squash(x: torch.Tensor) -> torch.Tensor:
    """The original's output activation: sigmoid stretched by 1e-3 each side (reaches 0 and 1), clamped."""
    return (torch.sigmoid(x) * (1 + 2e-3) - 1e-3).clamp(0.0, 1.0)


def normalised_pixel_centres(xs: torch.Tensor, ys: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Integer (or fractional) pixel indices -> [-1, 1] coordinates of their centres (align_corners=False)."""
    return torch.stack([(2.0 * xs.float() + 1.0) / width - 1.0, (2.0 * ys.float() + 1.0) / height - 1.0], dim=-1)


def binary_entropy(alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.clamp(1e-5, 1 - 1e-5)
    return -(a * torch.log(a) + (1 - a) * torch.log(1 - a)) / math.log(2.0)
