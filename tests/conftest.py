"""Shared fixtures. Real footage lives in ../shared/data (beside the repo, also in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYNCTALK_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SYNCTALK_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test footage not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def anchor_video(shared_data: Path) -> Path:
    return shared_data / "cnn_anchor_dfrf_71s.mp4"


@pytest.fixture(scope="session")
def prepared_anchor(anchor_video: Path, tmp_path_factory) -> Path:
    """The 71-s anchor clip prepared once per test session (full `synctalk prepare`, ~1 min).

    Set SYNCTALK_TEST_SUBJECT_CACHE=/some/dir to keep it between local runs: prepare is resumable,
    so a second session only re-validates the stage records."""
    from synctalk.prepare.pipeline import prepare

    cache = os.environ.get("SYNCTALK_TEST_SUBJECT_CACHE")
    root = Path(cache) / "anchor" if cache else tmp_path_factory.mktemp("anchor_subject")
    prepare(anchor_video, root)
    return root
