"""Safe loading of user-supplied weight files (original AVE, SyncNet, ...): never executes pickled code.

``read_state_dict`` takes a ``.safetensors`` file or a torch file readable with
``torch.load(weights_only=True)`` and returns its tensors; ``load_into`` checks the keys and shapes
against a model and loads them, with one-line errors that say what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from synctalk.errors import InputError


def read_state_dict(path: str | os.PathLike, pickle_hint: str = "") -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise InputError(f"{path.name} is not a readable safetensors file ({type(e).__name__})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, truncated zip, not a torch file at all
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if pickle_hint and ("weights_only" in str(e) or "Unsupported global" in str(e)):
            raise InputError(f"{path.name} is a pickled Python object, not a plain state dict; it is not "
                             f"loaded because unpickling can run code. {pickle_hint}") from None
        raise InputError(f"{path.name} is not a loadable weights-only torch file ({first[:160]})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path.name} does not hold a state dict of tensors")
    return dict(state)


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
              what: str) -> torch.nn.Module:
    """Load ``state`` into ``model`` after checking every key and shape; ``what`` names the model."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name} {len(keys)} (e.g. {keys[0]})" for name, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise InputError(f"{Path(path).name} is not {what}: {detail}")
    model.load_state_dict(dict(state))
    return model
