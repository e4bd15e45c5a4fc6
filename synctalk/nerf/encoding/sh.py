"""Real spherical-harmonics direction encoding up to degree 4 (16 coefficients, l = 0..3).

Constants are the orthonormal real SH basis (as used by Instant-NGP/ER-NeRF's "SHEncoder");
tests/test_nerf_encoding.py checks orthonormality by quadrature on the sphere.
"""

from __future__ import annotations

import torch

_C0 = 0.28209479177387814
_C1 = 0.48860251190291987
_C2 = (1.0925484305920792, 0.94617469575755997, 0.31539156525251999, 0.54627421529603959)
_C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154, 1.4453057213202769)


def sh_encode(directions: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Unit directions [N, 3] -> [N, degree**2]. ``degree`` is the number of bands (1..4)."""
    if not 1 <= degree <= 4:
        raise ValueError(f"SH degree must be 1..4, got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree > 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, -_C2[0] * y * z, _C2[1] * zz - _C2[2], -_C2[0] * x * z, _C2[3] * (xx - yy)]
    if degree > 3:
        out += [
            _C3[0] * y * (yy - 3 * xx),
            _C3[1] * x * y * z,
            _C3[2] * y * (1 - 5 * zz),
            _C3[3] * z * (5 * zz - 3),
            _C3[2] * x * (1 - 5 * zz),
            _C3[4] * z * (xx - yy),
            _C3[0] * x * (3 * yy - xx),
        ]
    return torch.stack(out, dim=-1)
