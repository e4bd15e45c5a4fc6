"""Rendering: occupancy grid, ray marching, compositing."""

from synctalk.nerf.render.composite import composite_packed, composite_packed_reference, render_inference
from synctalk.nerf.render.occupancy import OccupancyConfig, OccupancyGrid
from synctalk.nerf.render.raymarch import HEAD_AABB, PackedSamples, march_rays, march_rays_lattice, ray_aabb

__all__ = ["HEAD_AABB", "OccupancyConfig", "OccupancyGrid", "PackedSamples", "composite_packed",
           "composite_packed_reference", "march_rays", "march_rays_lattice", "ray_aabb", "render_inference"]
