"""`synctalk prepare` end to end on the real 71-s anchor clip (the subject every later stage uses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from synctalk import subject as S
from synctalk.prepare.maskcodec import MaskReader
from synctalk.subject import Subject

pytestmark = pytest.mark.slow


def test_manifest_and_files(prepared_anchor):
    sub = Subject(prepared_anchor)
    m = sub.manifest
    assert sub.n_frames == 1779 and sub.fps == 25.0 and sub.size == (512, 512)
    assert m["split"] == {"train": [0, 1617], "test": [1617, 1779]}
    assert sub.split.n_train == 1617 and len(sub.split.test) == 162
    for name in (S.FRAMES, S.AUDIO, S.LANDMARKS, S.PARSING, S.PORTRAIT, S.SEGMENTATION, S.EXPRESSIONS,
                 S.BACKGROUND, S.TORSO, S.TORSO_ALPHA, S.POSE, "figures/contact_sheet.png",
                 "figures/pose_track.png"):
        assert (prepared_anchor / name).is_file(), name
        assert name in m["files"]
    # Must be carried to the GPU machine beside a 35 MB PyAV wheel inside a 64 MiB limit.
    assert m["total_bytes"] <= 25 * 2**20, f"subject is {m['total_bytes'] / 2**20:.1f} MiB"
    for stage in ("decode", "landmarks", "parsing", "expressions", "background", "pose", "figures"):
        assert stage in m["stages"]


def test_arrays_are_frame_aligned(prepared_anchor):
    sub = Subject(prepared_anchor)
    n = sub.n_frames
    assert sub.landmarks().shape == (n, 478, 3)
    exp = sub.expressions()
    assert exp.shape == (n, 7) and np.isfinite(exp).all() and exp.min() >= 0 and exp.max() <= 1
    pose = sub.pose()
    assert pose["c2w"].shape == (n, 4, 4) and np.isfinite(pose["c2w"]).all()
    assert np.allclose(pose["c2w"][:, 3], [0, 0, 0, 1])
    rot = pose["c2w"][:, :3, :3].astype(np.float64)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-4)
    with MaskReader(prepared_anchor / S.PARSING) as labels:
        assert labels.shape == (n, 512, 512)
        mid = labels[n // 2]
        assert set(np.unique(mid)) <= set(S.LABEL_NAMES)
        assert (mid == S.LABEL_FACE).mean() > 0.02
    import wave

    with wave.open(str(prepared_anchor / S.AUDIO)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert w.getnframes() == n * 16000 // 25


def test_rerun_is_a_no_op(prepared_anchor):
    """Every stage's record is valid, so a second CLI run re-runs nothing and changes no file."""
    before = {p.name: p.stat().st_mtime_ns for p in prepared_anchor.iterdir() if p.is_file()}
    manifest = json.loads((prepared_anchor / S.MANIFEST).read_text())
    video = manifest["source"]["path"]
    r = subprocess.run([sys.executable, "-m", "synctalk", "prepare", video, "-o", str(prepared_anchor)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "running" not in (r.stdout + r.stderr)
    after = {p.name: p.stat().st_mtime_ns for p in prepared_anchor.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != S.MANIFEST} == \
           {k: v for k, v in before.items() if k != S.MANIFEST}


def test_footage_offset_is_measured_and_in_sync(prepared_anchor):
    """The landmarks stage measures the footage's own audio/video offset (the anchor is in sync)."""
    facts = Subject(prepared_anchor).manifest["stages"]["landmarks"]["facts"]["landmarks"]["av_offset"]
    assert abs(facts["frames"]) <= 1 and facts["r"] > 0.3, facts
