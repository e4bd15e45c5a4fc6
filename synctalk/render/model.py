"""Load an exported head model (``{lips,head}_model.{safetensors,json}``) for inference.

Only the export is read: EMA field weights, occupancy grid, scene transform and the training
settings. No training frames are loaded, so a render starts in well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from synctalk.errors import InputError
from synctalk.log import get_logger
from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform
from synctalk.nerf.field import HeadField, HeadFieldConfig
from synctalk.nerf.presets import TrainConfig, grid_config
from synctalk.nerf.render.occupancy import OccupancyConfig, OccupancyGrid

log = get_logger("render.model")

MODEL_STEMS = ("lips_model", "head_model")  # preferred first: the lip stage refines the head stage


@dataclass
class HeadModel:
    field: HeadField
    grid: OccupancyGrid
    scene: SceneTransform
    cfg: TrainConfig
    size: tuple[int, int]     # (height, width) the model was trained at (downscaled frames)
    n_frames: int             # frames of the subject it was trained on
    stage: str
    path: Path
    # [N, 4, 4] learned camera corrections (``pose_refine``), NeRF units: c2w' = c2w @ correction
    pose_correction: torch.Tensor | None = None


def default_workspace(subject_root: str | Path) -> Path:
    return Path(subject_root) / "workspace" / "nerf"


def find_model(workspace: str | Path) -> Path:
    """The stem of the model to render: lips_model if it exists, else head_model."""
    workspace = Path(workspace)
    for stem in MODEL_STEMS:
        if ckpt.meta_path(workspace / stem).is_file():
            return workspace / stem
    raise InputError(f"no trained head model in {workspace} (expected lips_model.json or head_model.json); "
                     "run `synctalk train SUBJECT` first")


def config_from_meta(meta: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise InputError("the model's JSON has no training settings; it was not written by `synctalk train`")
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


def load_head_model(workspace: str | Path, device: torch.device | str = "cpu") -> HeadModel:
    """Load the exported model of ``workspace`` onto ``device`` in eval mode (InputError when missing/stale)."""
    stem = find_model(workspace)
    tensors, meta = ckpt.load_checkpoint(stem, device)
    cfg = config_from_meta(meta)
    try:
        scene = SceneTransform.from_json(meta["scene"])
        size = (int(meta["size"][0]), int(meta["size"][1]))
        n_frames = int(meta["frames"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{ckpt.meta_path(stem)} lacks {e}; re-export it with `synctalk train`") from None
    field = HeadField(HeadFieldConfig(grid=grid_config(cfg)))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        field.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"{stem.name} does not match this synctalk's head model ({first}); "
                         "it was trained by another version: retrain the subject") from None
    field = field.to(device).eval().requires_grad_(False)
    grid = OccupancyGrid(OccupancyConfig(resolution=cfg.occupancy_resolution, dilate=cfg.occupancy_dilate),
                         device)
    if "grid.density" not in tensors or "grid.occupied" not in tensors:
        raise InputError(f"{stem.name} has no occupancy grid; re-export it with `synctalk train`")
    grid.load_state_dict({"density": tensors["grid.density"], "occupied": tensors["grid.occupied"]})
    log.info("loaded %s (%s stage, %dx%d, %d frames)", stem.name, meta.get("stage"), size[1], size[0], n_frames)
    correction = tensors.get("pose.c2w_correction")
    if correction is not None and tuple(correction.shape) != (n_frames, 4, 4):
        raise InputError(f"{stem.name}: pose.c2w_correction has shape {tuple(correction.shape)}, "
                         f"expected ({n_frames}, 4, 4); re-export it with `synctalk train`")
    return HeadModel(field, grid, scene, cfg, size, n_frames, str(meta.get("stage", "?")), stem,
                     None if correction is None else correction.float().cpu())
