"""`synctalk evaluate`: test-split metrics of a trained subject per compositing mode, cross-driven sync
scores, a printed table, metrics.json and side-by-side videos (docs/render.md, docs/metrics.md).

Public API: ``evaluate_subject(subject_root, audios=(), out_dir=None, workspace=None, options=...)`` and
``EvaluateOptions``."""

from __future__ import annotations

from typing import Any

__all__ = ["EvaluateOptions", "evaluate_subject", "format_table"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from synctalk.evaluate import run

        return getattr(run, name)
    raise AttributeError(name)
