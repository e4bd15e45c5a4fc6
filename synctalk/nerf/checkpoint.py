"""Training checkpoints: one safetensors file of tensors + one JSON of everything else.

``NAME.safetensors`` holds model weights, EMA weights, optimiser moments, the occupancy grid and the
sampling RNG state; ``NAME.json`` holds the stage, step, settings, scene transform and optimiser
hyper-parameters, plus the tensor file's size. Both are written atomically, tensors first, so a
readable JSON always names a complete tensor file. A checkpoint with a non-finite float tensor is never
written: training stops with a message instead (a NaN checkpoint would poison every resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from synctalk.errors import InputError, StageError
from synctalk.io.atomic import atomic_path, write_json
from synctalk.log import get_logger

log = get_logger("nerf.checkpoint")

FORMAT = "synctalk-nerf-checkpoint"
VERSION = 1


def tensor_path(stem: str | Path) -> Path:
    return Path(f"{stem}.safetensors")


def meta_path(stem: str | Path) -> Path:
    return Path(f"{stem}.json")


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save_checkpoint(stem: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    bad = first_non_finite(tensors)
    if bad is not None:
        raise StageError(f"refusing to save checkpoint {Path(stem).name}: {bad} holds NaN/inf "
                         "(training diverged); resume from the previous checkpoint with a lower learning rate")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous, non-aliased CPU tensors.
    host = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(tensor_path(stem)) as tmp:
        save_file(host, str(tmp), metadata={"format": FORMAT})
    record = {"format": FORMAT, "version": VERSION, "tensors": tensor_path(stem).name,
              "tensor_bytes": tensor_path(stem).stat().st_size, **meta}
    write_json(meta_path(stem), record)
    log.debug("checkpoint %s (%d tensors)", stem, len(host))


def load_meta(stem: str | Path) -> dict:
    """The JSON half of a checkpoint (cheap: settings and scene before loading any data)."""
    mp = meta_path(stem)
    if not mp.is_file():
        raise InputError(f"no checkpoint at {stem} (expected {mp.name}); train without --resume first")
    try:
        meta = json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{mp} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{mp} is not a version-{VERSION} synctalk NeRF checkpoint")
    return meta


def load_checkpoint(stem: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    stem = Path(stem)
    mp, tp = meta_path(stem), tensor_path(stem)
    meta = load_meta(stem)
    if not tp.is_file():
        raise InputError(f"checkpoint {stem} lacks its tensor file {tp.name}")
    if tp.stat().st_size != meta.get("tensor_bytes"):
        raise InputError(f"{tp} does not match {mp.name} (size differs); the checkpoint is incomplete")
    try:
        tensors = load_file(str(tp), device=str(device))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise InputError(f"cannot read {tp}: {e}") from None
    return tensors, meta


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """torch optimiser state_dict -> (tensors 'optim.<param>.<key>', JSON-able param groups)."""
    tensors = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": groups}
