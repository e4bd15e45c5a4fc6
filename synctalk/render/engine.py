"""Fast batched inference of the NeRF head: the same image as ``render_views.render_frame``, cheaper.

Equal to it with the defaults (``max_samples=None``, no ``limit_boxes``) up to early ray termination
(< 1e-4 per channel, see ``_render_rays``) and float rounding; ``RenderSession`` deliberately
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
* **Early ray termination in rounds**: rays march 8, then 8, then 16 more occupied samples and stop
  once their transmittance is below the compositing cut-off, instead of always taking the first 32
  (the reference weights everything behind that cut-off by zero, so those evaluations were wasted).
* A lean field forward: density and colour only (no uncertainty head, no gate norms), with the MLP
  weights packed once (synctalk.render.shade) and, on CUDA, one fused Triton kernel for all MLPs
  (tensor cores) after the fused hash-grid kernel; compositing fused too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synctalk.nerf.field import HeadField
from synctalk.nerf.render.composite import MIN_TRANSMITTANCE, composite_packed
from synctalk.nerf.render.raymarch import DEFAULT_DT, ray_aabb
from synctalk.log import get_logger
from synctalk.render.model import HeadModel
from synctalk.render.shade import FUSED_WEIGHT_DTYPE, fused_shade_enabled, pack_field, shade

log = get_logger("render.engine")

SCENE_AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)   # the trainer's marching box (synctalk.nerf.trainer)
AUDIO_WINDOW = 8                                  # frames [i-4, i+3] (synctalk.nerf.data.AUDIO_WINDOW)
# Perspective stretches an off-axis cell's image radially by up to 1/cos^2 of the view angle; 1.3
# covers > 28 degrees off-axis, more than any talking-head framing, plus 2 px for rounding.
BOX_RADIUS_SAFETY = 1.3
BOX_PAD_PX = 2
# Samples per ray per marching round (render._render_rays): most rays through the face are opaque
# within 8-12 samples, so small first rounds stop them early; the rest continue up to max_samples.
MARCH_ROUNDS = (8, 8, 16)
# Rays per call of the PyTorch marcher on the CPU (see ``_march``).
CPU_MARCH_CHUNK_RAYS = 4096


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
                 amp: bool = True, chunk_rays: int = 1 << 21, max_samples: int | None = None) -> None:
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
        # The fused kernel's weights (shade.FUSED_WEIGHT_DTYPE); without it, bf16 where training ran its
        # MLPs under bf16 autocast (CUDA), fp32 elsewhere.
        self._fused_shade = self.autocast and fused_shade_enabled(self.device)
        weights = FUSED_WEIGHT_DTYPE if self._fused_shade else torch.bfloat16 if self.autocast else torch.float32
        self.packed = pack_field(self.field, weights)

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

    def _march(self, origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
               k_start: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next ``cap`` occupied lattice points t = near + k dt, k >= k_start, t < far, of each ray ->
        (t [R, cap] valid where column < count, count [R], k_last [R]: lattice index of the last one)."""
        if self._fused:
            try:
                return self._march_fused(origins, dirs, near, far, k_start, cap)
            except Exception as e:  # a Triton build problem must not stop a render: the torch path is exact
                log.warning("fused marcher unavailable (%s: %s); using the torch marcher",
                            type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
                self._fused = False
        n_rays = origins.shape[0]
        if self.device.type == "cpu" and n_rays > CPU_MARCH_CHUNK_RAYS:
            # Rays are independent; in chunks the [rays, lattice] temporaries stay small enough for the
            # allocator to reuse (whole batches were mmap'd and zero-filled anew for every op).
            parts = [self._march_torch(origins[i:i + CPU_MARCH_CHUNK_RAYS], dirs[i:i + CPU_MARCH_CHUNK_RAYS],
                                       near[i:i + CPU_MARCH_CHUNK_RAYS], far[i:i + CPU_MARCH_CHUNK_RAYS],
                                       k_start[i:i + CPU_MARCH_CHUNK_RAYS], cap)
                     for i in range(0, n_rays, CPU_MARCH_CHUNK_RAYS)]
            return tuple(torch.cat(part) for part in zip(*parts))
        return self._march_torch(origins, dirs, near, far, k_start, cap)

    def _march_torch(self, origins, dirs, near, far, k_start, cap):
        """``_march`` in PyTorch (the reference the fused marcher is checked against)."""
        k = k_start[:, None] + torch.arange(self.lattice_len, device=self.device)[None, :]
        ts = near[:, None] + self.dt * k.to(near.dtype)
        valid = ts < far[:, None]
        points = origins[:, None, :] + ts[..., None] * dirs[:, None, :]
        valid &= self.grid.is_occupied(points.reshape(-1, 3)).reshape(valid.shape)
        rank = torch.cumsum(valid, dim=1, dtype=torch.int32)
        valid &= rank <= cap
        count = valid.sum(dim=1, dtype=torch.int32)
        t_out = torch.zeros(origins.shape[0], cap, device=self.device, dtype=near.dtype)
        ray_ids, col = valid.nonzero(as_tuple=True)
        t_out[ray_ids, rank[ray_ids, col].long() - 1] = ts[ray_ids, col]
        k_last = torch.where(valid, k, torch.full_like(k, -1)).amax(dim=1).to(torch.int32)
        return t_out, count, k_last

    def _march_fused(self, origins, dirs, near, far, k_start, cap):
        from synctalk.render.march_triton import march_fused

        return march_fused(origins, dirs, near, far, k_start, self._occupied_u8, self.grid.box_min,
                           self.grid.box_max, self.grid.cell_size, self.dt, self.lattice_len, cap,
                           self.grid.cfg.resolution)

    def march_rounds(self) -> list[int]:
        """Samples per marching round, summing to ``max_samples`` (see ``render``)."""
        rounds, left = [], self.max_samples
        for size in MARCH_ROUNDS:
            if left <= 0:
                break
            rounds.append(min(size, left))
            left -= rounds[-1]
        if left > 0:
            rounds.append(left)
        return rounds

    def _shade(self, points: torch.Tensor, dirs: torch.Tensor, sample_frames: torch.Tensor, codes: torch.Tensor,
               expressions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of samples (``HeadField.forward`` with individual code 0, packed weights)."""
        features = self.field.grid(points)
        return shade(self.packed, features, dirs, sample_frames, codes, expressions, self._fused_shade)

    @torch.no_grad()
    def warm_up(self, c2w: torch.Tensor) -> None:
        """Render a few rays through the image centre with pose ``c2w`` [4, 4]: loads (or compiles) every
        kernel the engine launches, so that cost can overlap other start-up work (frame decoding)."""
        if self.occupied_box is None:
            return
        fx, fy, cx, cy = self.intrinsics
        xs = torch.linspace(cx - 0.1 * cx, cx + 0.1 * cx, 64, device=self.device)
        cam = torch.stack([(xs - cx) / fx, torch.zeros_like(xs), -torch.ones_like(xs)], dim=-1)
        dirs = torch.nn.functional.normalize(cam @ c2w[:3, :3].T, dim=-1)
        origins = c2w[:3, 3].expand(64, 3).contiguous()
        frames = torch.zeros(64, dtype=torch.long, device=self.device)
        codes = torch.zeros(1, self.field.cfg.audio_dim, device=self.device)
        self._render_rays(origins, dirs, frames, codes, torch.zeros(1, self.field.cfg.expression_dim, device=self.device))

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
        codes, expressions = codes.float().contiguous(), expressions.float().contiguous()
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
            colour, opacity, samples = self._render_rays(origins, dirs, fr, codes, expressions)
            total_samples += samples
            bg = background[fr, y, x]
            rgb[fr, y, x] = colour + (1.0 - opacity)[:, None] * bg
            alpha[fr, y, x] = opacity
        return HeadBatch(rgb.clamp(0.0, 1.0), alpha, int(xs.shape[0]), total_samples)

    def _render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, ray_frames: torch.Tensor, codes: torch.Tensor,
                     expressions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """March, shade and composite rays in rounds -> (premultiplied colour [R, 3], opacity [R], samples).

        Round r takes each live ray's next ``march_rounds()[r]`` occupied lattice points, shades and
        composites them, and carries the transmittance T into the next round; a ray leaves when it
        has no more occupied points or T < MIN_TRANSMITTANCE. The single-pass reference gives zero
        weight to every sample behind T < MIN_TRANSMITTANCE, so the rounds only skip field
        evaluations that did not count (on the anchor: 2.65 M -> 1.47 M samples per frame); the one
        difference is that a round's compositing measures that cut-off from the round's start, which
        moves the result by less than MIN_TRANSMITTANCE."""
        near, far, hit = ray_aabb(origins, dirs, SCENE_AABB, self.min_near)
        near_occ, _, hit_occ = ray_aabb(origins, dirs, self.occupied_box, self.min_near)
        # Lattice points before the occupied cells' box are never occupied: start one step before it.
        k_next = (torch.floor((near_occ - near) / self.dt) - 1).clamp_min(0).to(torch.int32)
        far = torch.where(hit & hit_occ, far, near)  # no samples on rays that miss
        n = origins.shape[0]
        transmittance = torch.ones(n, device=self.device)
        colour = torch.zeros(n, 3, device=self.device)
        live = torch.arange(n, device=self.device)
        samples = 0
        rounds = self.march_rounds()
        for r, cap in enumerate(rounds):
            t_out, count, k_last = self._march(origins[live], dirs[live], near[live], far[live], k_next[live], cap)
            local, col = (torch.arange(cap, device=self.device)[None, :] < count[:, None]).nonzero(as_tuple=True)
            rays = live[local]
            samples += int(rays.shape[0])
            if rays.numel():
                t = t_out[local, col]
                sample_dirs = dirs[rays]
                sigma, rgb = self._shade(origins[rays] + t[:, None] * sample_dirs, sample_dirs, ray_frames[rays],
                                         codes, expressions)
                deltas = torch.full_like(sigma, self.dt)
                _, opacity, acc = composite_packed(sigma, deltas, rgb, local, live.shape[0])
                colour[live] += transmittance[live, None] * acc
                transmittance[live] *= 1.0 - opacity
            if r == len(rounds) - 1:
                break
            going = (count == cap) & (transmittance[live] >= MIN_TRANSMITTANCE)
            k_next[live] = k_last + 1
            live = live[going]
            if live.numel() == 0:
                break
        return colour, 1.0 - transmittance, samples
