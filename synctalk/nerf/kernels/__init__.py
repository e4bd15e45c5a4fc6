"""Fused GPU kernels (Triton), JIT-compiled on first use and cached by Triton in ~/.triton.

Selection is automatic: CUDA tensors use these kernels when Triton imports, CPU tensors (and
SYNCTALK_NERF_BACKEND=reference) use the pure-PyTorch reference in encoding/ and render/.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    # TRITON_INTERPRET=1 runs kernels on CPU tensors (used to test kernels without a GPU).
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return torch.cuda.is_available()
