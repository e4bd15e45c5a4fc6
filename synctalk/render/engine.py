"""Fast batched inference of the NeRF head: the same image as ``render_views.render_frame``, cheaper.

Exact with the defaults (``max_samples=None``, no ``limit_boxes``); ``RenderSession`` deliberately
departs from the reference in two documented ways (32 samples per ray, rays limited to the walked
frame's head box), see synctalk/render/session.py and docs/render.md.

What makes it fast (and why each step keeps the reference's result):

* Only rays inside the **projected head box** are marched. The box is the image-space bound of every
  occupied occupancy-grid cell seen with the frame's pose (cell centre +- a padded projected radius).
  A ray outside it meets no occupied cell, so the reference gives it zero samples and the plain
  background: skipping it changes nothing.
* The sample lattice is cut to the part of each ray inside the **bounding box of the occupied cells**.
  Samples keep the reference's positions t = near + k dt (near from the full scene box); lattice points
  before that sub-range are never occupied, so the "first max_samples occupied samples" are the same.
* Several frames share one march / one field call / one compositing call (fewer launches, one host
  sync per batch for the boxes and one for the sample count).
* A lean field forward: density and colour only (no uncertainty head, no gate norms), MLPs under bf16
  autocast on CUDA (as training), fused Triton hash-grid and compositing kernels on CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synctalk.nerf.encoding.sh import sh_encode
from synctalk.nerf.field import HeadField, density_activation
from synctalk.nerf.render.composite import composite_packed
from synctalk.nerf.render.raymarch import DEFAULT_DT, ray_aabb
from synctalk.log import get_logger
from synctalk.render.model import HeadModel

log = get_logger("render.engine")

SCENE_AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)   # the trainer's marching box (synctalk.nerf.trainer)
AUDIO_WINDOW = 8                                  # frames [i-4, i+3] (synctalk.nerf.data.AUDIO_WINDOW)
# Perspective stretches an off-axis cell's image radially by up to 1/cos^2 of the view angle; 1.3
# covers > 28 degrees off-axis, more than any talking-head framing, plus 2 px for rounding.
BOX_RADIUS_SAFETY = 1.3
BOX_PAD_PX = 2


def fused_march_enabled(device: torch.device) -> bool:
    """The Triton marcher on CUDA unless SYNCTALK_NERF_BACKEND=reference (same switch as the kernels)."""
    import os

    if device.type != "cuda" or os.environ.get("SYNCTALK_NERF_BACKEND", "auto") == "reference":
        return False
    from synctalk.nerf.kernels import triton_available

    return triton_available()


@dataclass
class HeadBatch:
    rgb: torch.Tensor     # [B, H, W, 3] float in [0, 1]: head over the given background
    alpha: torch.Tensor   # [B, H, W] head opacity
    rays: int             # rays marched (inside the head boxes)
    samples: int          # field evaluations


class HeadRenderer:
    """Renders an exported head model for arbitrary poses, audio codes and expressions."""

    def __init__(self, model: HeadModel, intrinsics: torch.Tensor, device: torch.device | str,
                 amp: bool = True, chunk_rays: int = 1 << 19, max_samples: int | None = None) -> None:
        self.model = model
        self.field: HeadField = model.field
        self.grid = model.grid
        self.device = torch.device(device)
        self.height, self.width = model.size
        self.intrinsics = [float(v) for v in intrinsics]
        # None = the training setting (what render_views.render_frame uses); see session.RENDER_MAX_SAMPLES.
        self.max_samples = int(model.cfg.max_samples if max_samples is None else max_samples)
        self.min_near = float(model.cfg.min_near)
        self.use_expressions = bool(model.cfg.condition_expressions)
        self.autocast = amp and self.device.type == "cuda"
        self.chunk_rays = int(chunk_rays)
        # The marching step: a training setting in newer exports, the original's fixed step before that.
        self.dt = float(getattr(model.cfg, "dt", DEFAULT_DT))
        self._prepare_occupied()
        self._fused = fused_march_enabled(self.device)
        self._occupied_u8 = self.grid.occupied.to(torch.uint8).contiguous().reshape(-1)

    # ------------------------------------------------------------------ occupancy geometry
    def _prepare_occupied(self) -> None:
        occ = self.grid.occupied
        cell = self.grid.cell_size.to(self.device)
        idx = occ.nonzero().to(torch.float32)
        self.occupied_centres = self.grid.box_min + (idx + 0.5) * cell          # [M, 3]
        self.cell_radius = float(0.5 * cell.norm())
        if idx.shape[0]:
            lo = self.grid.box_min + idx.min(dim=0).values * cell
            hi = self.grid.box_min + (idx.max(dim=0).values + 1) * cell
            self.occupied_box = tuple(float(v) for v in torch.cat([lo, hi]).tolist())
            diagonal = float((hi - lo).norm())
        else:
            self.occupied_box = None
            diagonal = 0.0
        self.lattice_len = int(math.ceil(diagonal / self.dt)) + 3

    def head_boxes(self, c2w: torch.Tensor) -> torch.Tensor:
        """[B, 4, 4] poses -> [B, 4] long pixel boxes x0, y0, x1, y1 (empty when nothing is occupied)."""
        b = c2w.shape[0]
        if self.occupied_box is None:
            return torch.zeros(b, 4, dtype=torch.long, device=self.device)
        fx, fy, cx, cy = self.intrinsics
        rot, centre = c2w[:, :3, :3], c2w[:, :3, 3]
        cam = torch.einsum("bmj,bji->bmi", self.occupied_centres[None] - centre[:, None], rot)  # R^T (p - t)
        depth = -cam[..., 2]
        r = self.cell_radius
        behind = (depth - r <= 1e-3).any(dim=1)
        safe_depth = (depth - r).clamp_min(1e-3)
        u = cx + fx * cam[..., 0] / depth.clamp_min(1e-3)
        v = cy - fy * cam[..., 1] / depth.clamp_min(1e-3)
        pad = BOX_RADIUS_SAFETY * r * max(fx, fy) / safe_depth + BOX_PAD_PX
        x0 = (u - pad).amin(dim=1).floor()
        x1 = (u + pad).amax(dim=1).ceil() + 1
        y0 = (v - pad).amin(dim=1).floor()
        y1 = (v + pad).amax(dim=1).ceil() + 1
        boxes = torch.stack([x0, y0, x1, y1], dim=1)
        whole = torch.tensor([0.0, 0.0, self.width, self.height], device=self.device)
        boxes = torch.where(behind[:, None], whole, boxes)  # a cell at/behind the camera: no safe bound
        lo = torch.zeros(4, device=self.device)
        hi = torch.tensor([self.width, self.height, self.width, self.height], device=self.device, dtype=torch.float32)
        return torch.minimum(torch.maximum(boxes, lo), hi).long()

    # ------------------------------------------------------------------ conditions
    @torch.no_grad()
    def audio_codes(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Smoothed audio codes [B, 32] of frames [B] from per-frame AVE features [N, 512] (window
        [i-4, i+3] clamped to the track, as training)."""
        offsets = torch.arange(-(AUDIO_WINDOW // 2), AUDIO_WINDOW - AUDIO_WINDOW // 2, device=frames.device)
        ids = (frames[:, None] + offsets[None, :]).clamp(0, features.shape[0] - 1)
        return self.field.encode_audio(features[ids]).float()

    # ------------------------------------------------------------------ rays and samples
    def _rays(self, c2w: torch.Tensor, boxes: list[list[int]]):
        fx, fy, cx, cy = self.intrinsics
        frame_ids, xs, ys = [], [], []
        for b, (x0, y0, x1, y1) in enumerate(boxes):
            if x1 <= x0 or y1 <= y0:
                continue
            yy, xx = torch.meshgrid(torch.arange(y0, y1, device=self.device), torch.arange(x0, x1, device=self.device),
                                    indexing="ij")
            xs.append(xx.reshape(-1))
            ys.append(yy.reshape(-1))
            frame_ids.append(torch.full((xx.numel(),), b, dtype=torch.long, device=self.device))
        if not xs:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty, empty
        return torch.cat(frame_ids), torch.cat(xs), torch.cat(ys)

    def _march(self, origins: torch.Tensor, dirs: torch.Tensor):
        """Packed samples (positions, dirs, ray ids) identical to ``march_rays_lattice`` without jitter."""
        near, far, hit = ray_aabb(origins, dirs, SCENE_AABB, self.min_near)
        near_occ, far_occ, hit_occ = ray_aabb(origins, dirs, self.occupied_box, self.min_near)
        dt = self.dt
        # One lattice step of slack against rounding at the box face; lattice points before it are
        # outside every occupied cell.
        k_start = (torch.floor((near_occ - near) / dt) - 1).clamp_min(0).long()
        if self._fused:
            try:
                return self._march_fused(origins, dirs, near, far, hit & hit_occ, k_start)
            except Exception as e:  # a Triton build problem must not stop a render: the torch path is exact
                log.warning("fused marcher unavailable (%s: %s); using the torch marcher",
                            type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
                self._fused = False
        k = k_start[:, None] + torch.arange(self.lattice_len, device=self.device)[None, :]
        ts = near[:, None] + dt * k.to(near.dtype)
        valid = (hit & hit_occ)[:, None] & (ts < far[:, None])
        points = origins[:, None, :] + ts[..., None] * dirs[:, None, :]
        valid &= self.grid.is_occupied(points.reshape(-1, 3)).reshape(valid.shape)
        valid &= torch.cumsum(valid, dim=1, dtype=torch.int32) <= self.max_samples
        ray_ids, col = valid.nonzero(as_tuple=True)
        t = ts[ray_ids, col]
        return origins[ray_ids] + t[:, None] * dirs[ray_ids], dirs[ray_ids], ray_ids

    def _march_fused(self, origins, dirs, near, far, hit, k_start):
        from synctalk.render.march_triton import march_fused

        far_eff = torch.where(hit, far, near)  # no samples on rays that miss
        t_out, count = march_fused(origins, dirs, near, far_eff, k_start, self._occupied_u8, self.grid.box_min,
                                   self.grid.box_max, self.grid.cell_size, self.dt, self.lattice_len,
                                   self.max_samples, self.grid.cfg.resolution)
        columns = torch.arange(self.max_samples, device=self.device)[None, :]
        ray_ids, col = (columns < count[:, None]).nonzero(as_tuple=True)
        t = t_out[ray_ids, col]
        return origins[ray_ids] + t[:, None] * dirs[ray_ids], dirs[ray_ids], ray_ids

    def _shade(self, points: torch.Tensor, dirs: torch.Tensor, audio: torch.Tensor,
               expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour only: the arithmetic of ``HeadField.forward`` with individual code 0."""
        f = self.field
        features = f.grid(points)
        audio_gate = f.audio_gate(features)
        expression_gate = F.relu(f.expression_gate(features))
        hidden = f.sigma_net(torch.cat([features, audio * audio_gate,
                                        expression.to(features.dtype) * expression_gate], dim=-1))
        sigma = density_activation(hidden[:, 0])
        geo = hidden[:, 1:]
        code = f.individual[:1].expand(points.shape[0], -1)
        color_in = torch.cat([sh_encode(dirs, f.cfg.sh_degree).to(geo.dtype), geo, code], dim=-1)
        rgb = torch.sigmoid(f.color_net(color_in).float()) * (1 + 2e-3) - 1e-3
        return sigma, rgb

    # ------------------------------------------------------------------ render
    @torch.no_grad()
    def render(self, c2w: torch.Tensor, codes: torch.Tensor, expressions: torch.Tensor,
               background: torch.Tensor, limit_boxes: torch.Tensor | None = None) -> HeadBatch:
        """c2w [B,4,4] (NeRF scene coordinates), codes [B,32], expressions [B,7], background [B,H,W,3]
        float in [0,1] -> head over background plus head alpha.

        ``limit_boxes`` [B,4] (x0, y0, x1, y1) additionally restricts marching to a box per frame (the
        session passes the walked frame's parsed head box grown by a margin): exact only if the model
        draws nothing outside it, which is what training asked of it (module docstring of session.py)."""
        b = c2w.shape[0]
        rgb = background.clone()
        alpha = torch.zeros(b, self.height, self.width, device=self.device)
        if self.occupied_box is None:
            return HeadBatch(rgb.clamp(0, 1), alpha, 0, 0)
        boxes = self.head_boxes(c2w)
        if limit_boxes is not None:
            limit = limit_boxes.to(boxes)
            boxes = torch.cat([torch.maximum(boxes[:, :2], limit[:, :2]), torch.minimum(boxes[:, 2:], limit[:, 2:])], 1)
        boxes = boxes.tolist()
        frame_ids, xs, ys = self._rays(c2w, boxes)
        if not self.use_expressions:
            expressions = torch.zeros_like(expressions)
        fx, fy, cx, cy = self.intrinsics
        total_samples = 0
        for start in range(0, xs.shape[0], self.chunk_rays):
            sl = slice(start, start + self.chunk_rays)
            fr, x, y = frame_ids[sl], xs[sl], ys[sl]
            cam = torch.stack([(x.float() - cx) / fx, -(y.float() - cy) / fy,
                               -torch.ones_like(x, dtype=torch.float32)], dim=-1)
            pose = c2w[fr]
            dirs = torch.einsum("rij,rj->ri", pose[:, :3, :3], cam)
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
            origins = pose[:, :3, 3].contiguous()
            points, sample_dirs, ray_ids = self._march(origins, dirs)
            total_samples += int(ray_ids.shape[0])
            sample_frames = fr[ray_ids]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                sigma, colour = self._shade(points, sample_dirs, codes.index_select(0, sample_frames),
                                            expressions.index_select(0, sample_frames))
            deltas = torch.full_like(sigma, self.dt, dtype=torch.float32)
            _, opacity, acc = composite_packed(sigma.float(), deltas, colour.float(), ray_ids, x.shape[0])
            bg = background[fr, y, x]
            rgb[fr, y, x] = acc + (1.0 - opacity)[:, None] * bg
            alpha[fr, y, x] = opacity
        return HeadBatch(rgb.clamp(0.0, 1.0), alpha, int(xs.shape[0]), total_samples)
