"""Mask bounding boxes (synctalk.nerf.data.mask_boxes / boxes_from_profiles), hand-checked."""

from __future__ import annotations

import numpy as np

from synctalk.nerf.data import boxes_from_profiles, mask_boxes


def test_mask_boxes_hand_checked():
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, 5:10, 7:13] = True                  # rows 5..9, cols 7..12
    masks[1, 0, 29] = True                       # a single corner pixel
    boxes = mask_boxes(masks, 0.0)
    assert boxes[0].tolist() == [7, 5, 13, 10]
    assert boxes[1].tolist() == [29, 0, 30, 1]
    assert boxes[2].tolist() == [0, 0, 30, 20]   # empty mask: the whole frame
    grown = mask_boxes(masks, 0.5)
    assert grown[0].tolist() == [7 - 3.0, 5 - 2.5, 13 + 3.0, 10 + 2.5]
    assert grown[2].tolist() == [0, 0, 30, 20]


def test_boxes_from_profiles_equals_mask_boxes():
    masks = np.random.default_rng(0).random((40, 16, 24)) > 0.99
    assert np.array_equal(boxes_from_profiles(masks.any(axis=2), masks.any(axis=1), 0.25), mask_boxes(masks, 0.25))
