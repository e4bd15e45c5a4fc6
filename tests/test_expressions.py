"""The expressions stage: blinks in real footage, pose robustness, the stored mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from media_factory import write_clip

from synctalk import subject as S
from synctalk.io.video import iter_frames
from synctalk.prepare import expressions as E
from synctalk.prepare import landmarks as L
from synctalk.prepare import mesh_topology as M
from synctalk.prepare.config import PrepareConfig
from synctalk.prepare.context import StageContext

# Anchor clip frames 60-189. Frames 112-114 of the clip are a full blink of both eyes (checked by eye
# on eye crops: lids shut at 112 and 113, reopening at 114); the eyes are open at 100-108 and 120-150.
START, STOP = 60, 190
BLINK = [112 - START, 113 - START]
OPEN = list(range(100 - START, 109 - START)) + list(range(120 - START, 150 - START))


@pytest.fixture(scope="module")
def subject(anchor_video: Path, tmp_path_factory) -> tuple[StageContext, dict]:
    root = tmp_path_factory.mktemp("expr_subject")
    write_clip(root / S.FRAMES, iter_frames(anchor_video, START, STOP))
    ctx = StageContext(root=root, source=root / S.FRAMES, config=PrepareConfig(),
                       facts={"n_frames": STOP - START, "width": 512, "height": 512, "fps": 25.0})
    ctx.facts.update(L.run(ctx))
    facts = E.run(ctx)
    return ctx, facts


def test_file_and_facts(subject):
    ctx, facts = subject
    with np.load(ctx.path(S.EXPRESSIONS), allow_pickle=False) as z:
        exp, raw, names = z["exp"], z["raw"], z["names"]
    n = STOP - START
    assert exp.shape == raw.shape == (n, 7) and exp.dtype == raw.dtype == np.float32
    assert tuple(names.tolist()) == S.EXPRESSION_NAMES
    assert exp.min() >= 0 and exp.max() <= 1
    f = facts["expressions"]
    assert len(f["neutral"]) == len(f["span"]) == 7 and min(f["span"]) > 0
    assert 0.2 < f["neutral"][5] < 0.45 and 0.2 < f["neutral"][6] < 0.45   # open-eye EAR


def test_blink_channels_rise_on_closed_eyes(subject):
    ctx, _ = subject
    with np.load(ctx.path(S.EXPRESSIONS), allow_pickle=False) as z:
        exp, raw = z["exp"], z["raw"]
    blink = exp[:, 5:7]
    assert (blink[BLINK] > 0.7).all()
    assert (np.median(blink, axis=0) < 0.3).all()
    assert (blink[OPEN] < 0.5).all()
    assert (raw[BLINK, 5:7] < 0.15).all() and (np.median(raw[OPEN, 5:7], axis=0) > 0.25).all()
    # brows are not blinks: the brow channels stay low at the blink
    assert (exp[BLINK, 2] < 0.7).all()


def test_raw_measures_ignore_head_pose(subject):
    """Random head turns/zoom/shift per frame change naive 2D measures but not ours."""
    ctx, _ = subject
    lms = S.load_landmarks(ctx.path(S.LANDMARKS))[0].astype(np.float64)
    rng = np.random.default_rng(0)
    n = lms.shape[0]
    angles = np.deg2rad(rng.uniform([-20, -10, -15], [20, 10, 15], size=(n, 3)))
    moved = np.empty_like(lms)
    for t, (yaw, pitch, roll) in enumerate(angles):
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        rot = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
               @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
               @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
        centre = lms[t].mean(axis=0)
        moved[t] = rng.uniform(0.8, 1.2) * (lms[t] - centre) @ rot.T + centre + rng.uniform(-30, 30, 3)
    ours = E.raw_measures(moved) - E.raw_measures(lms)
    naive = E._ear(moved, M.EAR_LEFT) - E._ear(lms, M.EAR_LEFT)   # EAR on the posed 2D points
    assert np.abs(ours).max() < 0.01
    assert np.abs(naive).max() > 0.03


def test_smoothing_and_mapping(subject):
    ctx, _ = subject
    raw = E.raw_measures(S.load_landmarks(ctx.path(S.LANDMARKS))[0])
    cfg = dataclasses.replace(PrepareConfig().expressions, smooth_window=0)
    assert np.array_equal(E.smooth(raw, 0), raw)
    smoothed = E.smooth(raw, 5)
    assert np.abs(np.diff(smoothed, 2, axis=0)).mean() < np.abs(np.diff(raw, 2, axis=0)).mean()
    neutral, span = E.normalisation(raw, cfg)
    exp = E.normalise(raw, neutral, span)
    # the neutral (median) value maps to 0, neutral +/- span (in the channel's direction) to 1
    assert np.allclose(E.normalise(neutral[None], neutral, span), 0)
    assert np.allclose(E.normalise((neutral + E.SIGNS * span)[None], neutral, span), 1)
    assert (span[:5] >= cfg.min_brow_span).all()
    assert exp.shape == raw.shape
