"""The torso model: a 2-D pose-conditioned deformable torso field trained under the frozen head
(docs/torso.md). Public API: ``load_torso(workspace, device) -> TorsoModel``, ``TorsoModel.render``."""

from synctalk.torso.model import TorsoModel, load_torso

__all__ = ["TorsoModel", "load_torso"]
