"""The trainer's rays must pass through the points that ``convention.project`` puts on their pixels."""

from types import SimpleNamespace

import numpy as np
import torch

from synctalk.nerf.data import TrainData
from synctalk.prepare.headpose.convention import project, rotvec_to_matrix


def test_rays_hit_projected_points_at_integer_pixel_centres():
    rng = np.random.default_rng(3)
    c2w = np.eye(4)
    c2w[:3, :3] = rotvec_to_matrix(np.array([0.05, -0.1, 0.2]))
    c2w[:3, 3] = [0.02, -0.1, 1.3]
    intrinsics = np.array([780.0, 780.0, 256.0, 256.0])
    points = rng.uniform(-0.2, 0.2, size=(40, 3))
    uv = project(points, c2w, intrinsics)
    # Cast through integer pixels near the projections (a +0.5 centre offset would miss by 0.5 px).
    pixels = np.round(uv)
    fake = SimpleNamespace(intrinsics=torch.tensor(intrinsics, dtype=torch.float32),
                           c2w=torch.tensor(c2w[None], dtype=torch.float32))
    frames = torch.zeros(len(points), dtype=torch.long)
    origins, dirs = TrainData.rays(fake, frames, torch.tensor(pixels[:, 0]).long(), torch.tensor(pixels[:, 1]).long())
    # Re-project a point far along each ray: it must land on the integer pixel it was cast through.
    far = (origins + 1.3 * dirs).double().numpy()
    back = project(far, c2w, intrinsics)
    np.testing.assert_allclose(back, pixels, atol=2e-3)
