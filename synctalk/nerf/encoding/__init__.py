"""Input encodings of the head field: tri-plane hash grid (positions) and SH (directions)."""

from synctalk.nerf.encoding.hashgrid import HashGridConfig, TriPlaneHashGrid, hashgrid_encode_reference, level_layout
from synctalk.nerf.encoding.sh import sh_encode

__all__ = ["HashGridConfig", "TriPlaneHashGrid", "hashgrid_encode_reference", "level_layout", "sh_encode"]
