"""Settings of the torso stage (`TorsoConfig`) and its presets, named as the head's (synctalk/nerf/presets.py).

* ``fast`` (default): ~2-3 min on one H100 (BENCHMARKS.md, "Torso"): 3000 steps of 4 images x 16,384 rays.
* ``paper``: the original's schedule (README recipe `--torso --iters 150000`): one image and 65,536
  rays per step, no bf16.
* ``tiny``: CPU smoke configuration for the tests (runs on the head's tiny, downscaled frames).

The frame size and the frames used are the head's (the torso is composited under that head), so
there is no downscale / max_frames here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from synctalk.config import named_preset, parse_flat_overrides


@dataclass(frozen=True)
class TorsoConfig:
    steps: int = 3000
    images_per_step: int = 4
    rays_per_step: int = 65536
    box_ray_fraction: float = 0.7      # share of rays inside the frame's grown torso-alpha box (rest: anywhere)
    box_margin: float = 0.1            # torso box grown by this fraction of its size
    lr_grid: float = 1e-2
    lr_net: float = 5e-3
    lr_decay: float = 0.1              # lr * decay^(step/steps)
    lambda_alpha: float = 0.05         # L1(alpha, torso_alpha): keeps alpha 0 on the plate, crisp edges
    lambda_composite: float = 1.0      # L1(head over torso over plate, GT) outside the GT head mask
    lambda_entropy: float = 1e-4       # binary entropy of alpha (the original's)
    lambda_deform: float = 1e-3        # mean |dx|^2: deform only where the image asks for it
    code_dim: int = 8
    hidden: int = 32
    shrink: float = 0.8
    standardise_pose: bool = False     # standardise the projected anchors over the training poses (False: raw x/z, the original)
    head_box_only: bool = False        # render the frozen head only inside its grown head box (faster; see train.py)
    # export / rendering
    render_scale: float = 0.5          # TorsoModel renders at this fraction of the frame size, then upsamples
    occupancy_resolution: int = 128    # 2-D occupancy cells per side (export)
    occupancy_frames: int = 64         # training frames whose alpha builds the occupancy mask
    occupancy_threshold: float = 0.01
    occupancy_dilate: int = 2          # cells
    # run
    amp: bool = True                   # bf16 for the MLPs on CUDA (the grid stays fp32)
    seed: int = 0
    checkpoint_every: int = 1000
    test_frames: int | None = None     # evaluate this many test frames (None: the whole test split)
    save_test_images: int = 3
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, TorsoConfig] = {
    "fast": TorsoConfig(),
    "paper": TorsoConfig(steps=150000, images_per_step=1, rays_per_step=65536, box_ray_fraction=0.0,
                         lr_decay=0.1, amp=False, checkpoint_every=10000),
    "tiny": TorsoConfig(steps=100, images_per_step=2, rays_per_step=2048, occupancy_resolution=32,
                        occupancy_frames=8, checkpoint_every=30, test_frames=2, save_test_images=1,
                        amp=False, device="cpu"),
}


def torso_preset(name: str, **overrides: Any) -> TorsoConfig:
    return named_preset(PRESETS, name, "torso", **overrides)


def parse_torso_overrides(items: list[str]) -> dict[str, Any]:
    """``["steps=500", "amp=false"]`` -> typed overrides (types taken from the dataclass defaults)."""
    return parse_flat_overrides(TorsoConfig(), items, {"test_frames": int})
