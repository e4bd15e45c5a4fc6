"""Training settings of the head and lip stages (`TrainConfig`) and the named presets.

* ``paper``: the original's schedule (original-synctalk.md §2.8): one image and 65,536 rays per step,
  60k head steps then 40k lip steps, 128^3 occupancy grid updated every 16 steps.
* ``fast`` (default): the same losses and model, tuned for wall time on one GPU: 4 images per step,
  65,536 rays per step (spread over the 4 images, mostly inside each frame's head box), fewer steps,
  bf16 autocast for the MLPs (hash grid and compositing stay fp32).
* ``tiny``: a CPU smoke configuration (frames downscaled, a few hundred rays, a 32^3 grid); used by the
  tests, never for real results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from synctalk.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    # data
    downscale: int = 1                 # train on frames resized by 1/downscale (tiny: CPU speed)
    max_frames: int | None = None      # use only the first N frames (tests)
    head_box_margin: float = 0.15      # head box grown by this fraction of its size for ray sampling
    box_ray_fraction: float = 0.8      # share of rays drawn inside the head box (rest: whole frame)
    # head stage
    head_steps: int = 4000
    images_per_step: int = 4
    rays_per_step: int = 65536
    lr_grid: float = 1e-2
    lr_net: float = 1e-3
    lr_decay: float = 0.5              # lr * decay^(step/steps)
    weight_decay: float = 0.01         # AdamW default, as the original
    audio_att_lr_mult: float = 5.0
    audio_att_weight_decay: float = 1e-4
    ema_decay: float = 0.95
    ema_every: int = 10
    lambda_entropy: float = 1e-4
    lambda_attention: float = 1e-4
    lambda_uncertainty: float = 0.01
    # lip stage
    lips_steps: int = 500
    lips_lr_decay: float = 0.05
    lip_patches: int = 16
    patch_size: int = 64
    perceptual: str = "hedvgg"         # hedvgg | lpips_alex | ssim | none
    perceptual_weights: str | None = None
    lambda_perceptual_box: float = 0.01
    lambda_perceptual_patch: float = 0.1
    # model
    grid_log2_table_size: int = 14     # hash-table rows per level and plane = 2^this (original: 14)
    condition_expressions: bool = True # feed the 7 blendshapes to the field (False: zeros, an ablation)
    # rendering
    max_samples: int = 16
    occupancy_resolution: int = 128
    occupancy_every: int = 16
    occupancy_dilate: bool = True
    scene_fill: float = 0.8            # the head's largest half-extent maps to this NeRF coordinate
    min_near: float = 0.05
    chunk_rays: int = 65536            # rays per chunk when rendering whole frames
    # run
    amp: bool = True                   # bf16 autocast for the MLPs on CUDA (ignored on CPU)
    seed: int = 0
    val_every: int = 1000
    val_frames: int = 4
    checkpoint_every: int = 2000
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(head_steps=60000, lips_steps=40000, images_per_step=1, rays_per_step=65536,
                         box_ray_fraction=0.0, ema_every=1000, val_every=10000, checkpoint_every=10000,
                         amp=False),
    "fast": TrainConfig(),
    "tiny": TrainConfig(downscale=4, max_frames=48, head_steps=120, lips_steps=8, images_per_step=2,
                        rays_per_step=1024, lip_patches=2, patch_size=16, occupancy_resolution=32,
                        ema_every=1, ema_decay=0.9,
                        occupancy_every=16, val_every=60, val_frames=2, checkpoint_every=60,
                        chunk_rays=8192, perceptual="ssim", amp=False, device="cpu"),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise InputError(f"unknown training preset {name!r}; choose from {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown training setting(s) {unknown}")
    return replace(PRESETS[name], **overrides)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["head_steps=500", "amp=false"]`` -> typed overrides (types taken from the dataclass defaults)."""
    defaults = TrainConfig()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not hasattr(defaults, key):
            raise InputError(f"bad --set {item!r}: expected FIELD=VALUE with a TrainConfig field")
        current = getattr(defaults, key)
        try:
            if isinstance(current, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("1", "true", "yes")
            elif isinstance(current, int):
                value = int(raw)
            elif isinstance(current, float):
                value = float(raw)
            elif current is None:  # optional fields: max_frames (int), perceptual_weights (path)
                value = None if raw.lower() in ("none", "null") else (int(raw) if key == "max_frames" else raw)
            else:
                value = raw
        except ValueError:
            raise InputError(f"bad --set {item!r}: {raw!r} is not a valid {type(current).__name__}") from None
        out[key] = value
    return out
