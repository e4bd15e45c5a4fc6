"""Portrait blend, paste-back geometry and seams, and comparison frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synctalk.compose import (
    SourceCrop,
    blend_face,
    blend_face_torch,
    comparison_frames,
    difference_heatmap,
    paste_into_source,
    paste_into_source_torch,
    seam_weights,
    side_by_side,
)
from synctalk.errors import InputError

CROP = {"x0": 100, "y0": 50, "side": 200, "source_width": 400, "source_height": 300}


def _frames(seed: int = 0, shape=(32, 40, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def test_blend_face_identity_and_half_mask():
    render, original = _frames()
    ones = np.full(render.shape[:2], 255, np.uint8)
    assert np.array_equal(blend_face(render, original, ones), render)
    assert np.array_equal(blend_face(render, original, np.zeros(render.shape[:2], np.float32)), original)
    half = blend_face(render, original, np.full(render.shape[:2], 0.5, np.float32))
    expected = np.rint((render.astype(np.float32) + original) / 2)
    assert np.abs(half.astype(np.float32) - expected).max() <= 1  # ties may round either way
    with pytest.raises(InputError):
        blend_face(render, original, ones[:10])


def test_blend_face_torch_matches_numpy():
    render, original = _frames(1)
    mask = np.random.default_rng(2).integers(0, 256, render.shape[:2], dtype=np.uint8)
    t = lambda a: torch.tensor(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    out = blend_face_torch(t(render), t(original), torch.tensor(mask)[None])
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy() * 255, blend_face(render, original, mask), atol=0.51)


def _marker_frame(size: int) -> np.ndarray:
    frame = np.zeros((size, size, 3), np.uint8)
    frame[40:50, 60:70] = 255  # working pixels rows 40-49, cols 60-69
    return frame


def _centroid(image: np.ndarray) -> tuple[float, float]:
    w = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    return float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())


@pytest.mark.parametrize("size", [100, 80, 256])  # shrink x2, enlarge x2.5, shrink to 200 from 256
def test_paste_geometry_puts_the_marker_where_the_crop_maps_it(size):
    source = np.zeros((300, 400, 3), np.uint8)
    frame = _marker_frame(size)
    out = paste_into_source(frame, source, CROP)
    scale = CROP["side"] / size
    # pixel centre u maps to source x0 + (u + 0.5) * scale - 0.5; the marker centre is u = 64.5, v = 44.5
    expected_y = CROP["y0"] + (44.5 + 0.5) * scale - 0.5
    expected_x = CROP["x0"] + (64.5 + 0.5) * scale - 0.5
    cy, cx = _centroid(out)
    assert cy == pytest.approx(expected_y, abs=0.05) and cx == pytest.approx(expected_x, abs=0.05)
    # nothing outside the crop square changes
    outside = np.ones(out.shape[:2], bool)
    outside[50:250, 100:300] = False
    assert not out[outside].any()


def test_paste_is_exact_inside_and_source_outside():
    rng = np.random.default_rng(3)
    source = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    frame = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # same size: no resampling
    out = paste_into_source(frame, source, CROP, feather_px=6)
    assert np.array_equal(out[56:244, 106:294], frame[6:194, 6:194])  # interior: the frame exactly
    untouched = out.copy()
    untouched[50:250, 100:300] = source[50:250, 100:300]
    assert np.array_equal(untouched, source)
    assert np.array_equal(paste_into_source(frame, source, CROP, feather_px=0)[50:250, 100:300], frame)


def test_feathered_seam_has_no_step():
    """A +30 shading offset in the render shows as a 30-level step without feathering, not with it."""
    ys, xs = np.mgrid[0:300, 0:400]
    source = np.repeat((60 + 0.3 * xs + 0.2 * ys)[..., None], 3, axis=2).astype(np.uint8)
    frame = np.clip(source[50:250, 100:300].astype(np.int16) + 30, 0, 255).astype(np.uint8)

    def max_step(image: np.ndarray) -> int:
        img = image[..., 0].astype(np.int16)
        return int(max(np.abs(np.diff(img, axis=0)).max(), np.abs(np.diff(img, axis=1)).max()))

    assert max_step(paste_into_source(frame, source, CROP, feather_px=0)) >= 29
    assert max_step(paste_into_source(frame, source, CROP, feather_px=8)) <= 7  # 30 * 1.5 / 8 + slope + rounding


def test_edges_on_the_source_border_are_not_feathered_and_overhang_is_clipped():
    crop = SourceCrop.from_dict({"x0": -20, "y0": 0, "side": 120, "source_width": 200, "source_height": 150})
    w = seam_weights(crop, 8)
    assert w[60, :20].min() == 1.0  # left edge is off-source: no ramp
    assert w[0, 60] == 1.0  # top edge on the border: no ramp
    assert w[60, -1] < 0.05 and w[-1, 60] < 0.05  # right and bottom edges are inside: ramped
    source = np.zeros((150, 200, 3), np.uint8)
    frame = np.full((60, 60, 3), 200, np.uint8)
    out = paste_into_source(frame, source, crop)
    assert out[0:100, 0:80].min() == 200 and not out[:, 101:].any() and not out[121:].any()


def test_torch_paste_matches_numpy_and_batches():
    rng = np.random.default_rng(4)
    ys, xs = np.mgrid[0:300, 0:400]
    source = np.stack([(xs * 0.5) % 256, (ys * 0.7) % 256, (xs + ys) % 256], axis=2).astype(np.uint8)
    frames = [np.clip(rng.normal(128, 30, (80, 80, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    to_t = lambda a: torch.tensor(a).permute(2, 0, 1).float() / 255  # noqa: E731
    out = paste_into_source_torch(torch.stack([to_t(f) for f in frames]), to_t(source), CROP)
    assert out.shape == (2, 3, 300, 400)
    for i, f in enumerate(frames):
        ref = paste_into_source(f, source, CROP).astype(np.float32)
        got = out[i].permute(1, 2, 0).numpy() * 255
        assert np.abs(got - ref).max() <= 1.5  # same bicubic kernel, float vs uint8 rounding


def test_crop_validation():
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InputError, match="lacks"):
        paste_into_source(frame, np.zeros((300, 400, 3), np.uint8), {"x0": 0, "y0": 0, "side": 64})
    with pytest.raises(InputError, match="source frame"):
        paste_into_source(frame, np.zeros((100, 100, 3), np.uint8), CROP)
    with pytest.raises(InputError, match="square"):
        paste_into_source(np.zeros((64, 32, 3), np.uint8), np.zeros((300, 400, 3), np.uint8), CROP)
    with pytest.raises(InputError, match="overlap"):
        SourceCrop.from_dict({**CROP, "x0": 500})


def test_side_by_side_layout_and_heatmap():
    gt, render = _frames(5, (48, 64, 3))
    frame = side_by_side(gt, render, labels=None)
    assert frame.shape == (48, 192, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame[:, :64], gt) and np.array_equal(frame[:, 64:128], render)
    same = difference_heatmap(gt, gt)
    assert (same == same[0, 0]).all()  # zero error: one colour everywhere (inferno's darkest)
    bright = difference_heatmap(np.zeros_like(gt), np.full_like(gt, 255))
    assert bright.astype(int).sum() > same.astype(int).sum()
    labelled = list(comparison_frames([gt, gt], [render, render]))
    assert len(labelled) == 2 and not np.array_equal(labelled[0][:, :64], gt)  # text drawn on the panel
