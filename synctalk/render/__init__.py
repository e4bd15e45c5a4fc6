"""Rendering a trained subject: fast batched head inference (engine.py), driving tracks (track.py),
compositing modes incl. portrait paste-back (session.py, portrait.py), MP4/PNG output (output.py).

Public API (docs/render.md): ``render_audio(subject_root, audio_path, out_path, options, workspace)``
and ``RenderOptions``. Heavy modules load on first use so ``import synctalk.render`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RenderOptions", "render_audio"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from synctalk.render import api

        return getattr(api, name)
    raise AttributeError(name)
