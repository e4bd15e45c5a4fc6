"""One-off conversion of a PICKLED SyncNet file into a safe safetensors state dict.

    python -m synctalk.audio.syncnet_convert syncnet_v2.model syncnet_v2.safetensors --trust-pickle

synctalk never unpickles weights by itself (``torch.load(weights_only=True)`` everywhere). If your copy
of ``syncnet_v2.model`` is a plain state dict, ``synctalk sync-score --syncnet`` reads it directly and
you do not need this. Only if it is a whole pickled model object does loading refuse it; then run this
step yourself, AT YOUR OWN RISK: unpickling executes whatever code the file names, so do it only on a
file you trust (ideally in a throwaway environment). A pickled ``SyncNetModel.S`` also needs the
``syncnet_python`` checkout on PYTHONPATH so its class can be imported. Nothing calls this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(src: Path, dst: Path) -> int:
    """Unpickle ``src`` (trusted!) and write its tensors to ``dst``; returns the number of tensors."""
    import torch
    from safetensors.torch import save_file

    from synctalk.io.atomic import atomic_path

    obj = torch.load(src, map_location="cpu", weights_only=False)  # the explicit, opt-in unsafe step
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SystemExit(f"{src} holds neither a module nor a state dict of tensors")
    with atomic_path(dst, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in obj.items()}, str(tmp))
    return len(obj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a trusted pickled SyncNet file to safetensors.")
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--trust-pickle", action="store_true",
                    help="required: confirms you trust SRC (unpickling can run arbitrary code)")
    args = ap.parse_args(argv)
    if not args.trust_pickle:
        print("refusing to unpickle without --trust-pickle (unpickling can run arbitrary code)", file=sys.stderr)
        return 2
    n = convert(args.src, args.dst)
    print(f"wrote {n} tensors to {args.dst}; pass it to `synctalk sync-score --syncnet`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
