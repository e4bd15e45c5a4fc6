"""Portrait paste-back: blend a rendered face into its original frame, and put a working-size frame back
into the larger source video it was cropped from.

Two steps, both in numpy/cv2 (CPU, uint8 frames) and in torch (batched, any device, float [0,1]):

1. `blend_face`: out = render * M + original * (1 - M) with the soft portrait mask M in [0, 1]
   (the original's Portrait-Sync: everything outside the face comes from the original frame).
2. `paste_into_source`: `prepare` took a fixed square crop (x0, y0, side) of the source and scaled it
   to the working size. This scales the frame back to side x side and pastes it at (x0, y0). The
   outer `feather_px` pixels of every crop edge that lies inside the source ramp (smoothstep) from the
   source to the paste, so a small colour/shading difference between render and source does not show
   as a rectangular seam (a complaint about the original, where users pasted by hand). Crop edges on
   or beyond the source border need no ramp and are clipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synctalk.errors import InputError

DEFAULT_FEATHER_PX = 8


def _mask01(mask: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float 0..1, [H,W] or [H,W,1] -> float32 [H,W,1] in [0,1]."""
    m = np.asarray(mask)
    m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else np.clip(m.astype(np.float32), 0.0, 1.0)
    return m[..., None] if m.ndim == 2 else m


def blend_face(render: np.ndarray, original: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """render * M + original * (1 - M) for HxWx3 frames; result has the original's dtype."""
    if render.shape != original.shape or soft_mask.shape[:2] != original.shape[:2]:
        raise InputError(f"blend_face: render {render.shape}, original {original.shape} and mask "
                         f"{soft_mask.shape} must have the same height and width")
    m = _mask01(soft_mask)
    out = original.astype(np.float32) + m * (render.astype(np.float32) - original.astype(np.float32))
    if original.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(original.dtype)


def blend_face_torch(render: torch.Tensor, original: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Batched blend on float tensors: render/original [B,3,H,W], mask [B,1,H,W] or [B,H,W] in [0,1]."""
    if soft_mask.ndim == 3:
        soft_mask = soft_mask[:, None]
    if soft_mask.dtype == torch.uint8:
        soft_mask = soft_mask.to(render.dtype) / 255.0
    return torch.lerp(original, render, soft_mask.to(render.dtype).clamp(0, 1))


@dataclass(frozen=True)
class SourceCrop:
    """The square region of the source video that became the working frames (source pixels)."""

    x0: int
    y0: int
    side: int
    source_width: int
    source_height: int

    @staticmethod
    def from_dict(crop: Mapping[str, Any]) -> "SourceCrop":
        """From subject.json's `crop` (keys x0, y0, side, source_width, source_height)."""
        try:
            values = {k: int(round(float(crop[k]))) for k in ("x0", "y0", "side", "source_width", "source_height")}
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"crop {dict(crop)!r} lacks or mistypes {e}; expected x0, y0, side, "
                             "source_width, source_height") from None
        result = SourceCrop(**values)
        if result.side <= 0 or result.source_width <= 0 or result.source_height <= 0:
            raise InputError(f"crop {values} has a non-positive size")
        if (result.x0 >= result.source_width or result.y0 >= result.source_height
                or result.x0 + result.side <= 0 or result.y0 + result.side <= 0):
            raise InputError(f"crop {values} does not overlap the {result.source_width}x{result.source_height} source")
        return result

    def region(self) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) in the source and (rows, cols) in the side x side paste, clipped to the source."""
        sx0, sy0 = max(self.x0, 0), max(self.y0, 0)
        sx1, sy1 = min(self.x0 + self.side, self.source_width), min(self.y0 + self.side, self.source_height)
        return (slice(sy0, sy1), slice(sx0, sx1),
                slice(sy0 - self.y0, sy1 - self.y0), slice(sx0 - self.x0, sx1 - self.x0))


def _ramp(length: int, feather_px: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D paste weight along one crop axis: smoothstep from ~0 to 1 over `feather_px` at each ramped end."""
    w = np.ones(length, dtype=np.float32)
    if feather_px <= 0:
        return w
    idx = np.arange(length, dtype=np.float32)
    for enabled, distance in ((ramp_start, idx), (ramp_end, length - 1 - idx)):
        if enabled:
            t = np.clip((distance + 0.5) / feather_px, 0.0, 1.0)
            w *= t * t * (3.0 - 2.0 * t)
    return w


def seam_weights(crop: SourceCrop, feather_px: int = DEFAULT_FEATHER_PX) -> np.ndarray:
    """[side, side] float32 paste weight: 1 inside, ramps at the crop edges that lie inside the source."""
    ramp_x = _ramp(crop.side, feather_px, crop.x0 > 0, crop.x0 + crop.side < crop.source_width)
    ramp_y = _ramp(crop.side, feather_px, crop.y0 > 0, crop.y0 + crop.side < crop.source_height)
    return ramp_y[:, None] * ramp_x[None, :]


def _check_frames(crop_hw: tuple[int, ...], source_hw: tuple[int, ...], crop: SourceCrop) -> None:
    if crop_hw[0] != crop_hw[1]:
        raise InputError(f"the working frame must be square, got {crop_hw[0]}x{crop_hw[1]}")
    if tuple(source_hw) != (crop.source_height, crop.source_width):
        raise InputError(f"source frame is {source_hw[1]}x{source_hw[0]}, but the subject's crop was taken "
                         f"from a {crop.source_width}x{crop.source_height} source")


def paste_into_source(crop_frame: np.ndarray, source_frame: np.ndarray, crop: Mapping[str, Any] | SourceCrop,
                      feather_px: int = DEFAULT_FEATHER_PX) -> np.ndarray:
    """Scale the working-size frame [S,S,3] back to side x side and paste it into a copy of the source
    frame [H,W,3] at (x0, y0), feathering inner seams. uint8 in, uint8 out (float frames keep dtype)."""
    crop = crop if isinstance(crop, SourceCrop) else SourceCrop.from_dict(crop)
    _check_frames(crop_frame.shape[:2], source_frame.shape[:2], crop)
    import cv2  # lazily: the torch path must not need OpenCV (an optional dependency)

    size = crop_frame.shape[0]
    # Cubic when enlarging; area averaging when shrinking (cubic would alias).
    interp = cv2.INTER_CUBIC if crop.side >= size else cv2.INTER_AREA
    scaled = cv2.resize(crop_frame, (crop.side, crop.side), interpolation=interp) if crop.side != size else crop_frame
    rows, cols, prows, pcols = crop.region()
    weight = seam_weights(crop, feather_px)[prows, pcols][..., None]
    out = source_frame.copy()
    base = source_frame[rows, cols].astype(np.float32)
    mixed = base + weight * (scaled[prows, pcols].astype(np.float32) - base)
    if source_frame.dtype == np.uint8:
        out[rows, cols] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    else:
        out[rows, cols] = mixed.astype(source_frame.dtype)
    return out


def paste_into_source_torch(crop_frames: torch.Tensor, source_frames: torch.Tensor,
                            crop: Mapping[str, Any] | SourceCrop, feather_px: int = DEFAULT_FEATHER_PX
                            ) -> torch.Tensor:
    """Batched paste on the render device: crop_frames [B,3,S,S], source_frames [B,3,H,W] (or one
    [3,H,W] shared by the batch), float in [0,1]. Returns new [B,3,H,W] frames."""
    crop = crop if isinstance(crop, SourceCrop) else SourceCrop.from_dict(crop)
    if source_frames.ndim == 3:
        source_frames = source_frames[None].expand(crop_frames.shape[0], -1, -1, -1)
    _check_frames(tuple(crop_frames.shape[-2:]), tuple(source_frames.shape[-2:]), crop)
    size = crop_frames.shape[-1]
    scaled = crop_frames
    if crop.side != size:
        # bicubic (A=-0.75, half-pixel centres) matches cv2's INTER_CUBIC; antialias when shrinking.
        scaled = F.interpolate(crop_frames, size=(crop.side, crop.side), mode="bicubic", align_corners=False,
                               antialias=crop.side < size).clamp(0, 1)
    rows, cols, prows, pcols = crop.region()
    weight = torch.from_numpy(seam_weights(crop, feather_px)[prows, pcols]).to(scaled.device, scaled.dtype)
    out = source_frames.clone()
    out[..., rows, cols] = torch.lerp(source_frames[..., rows, cols], scaled[..., prows, pcols], weight)
    return out
