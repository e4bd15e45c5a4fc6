"""Frame banks that fill while rendering, and the device-side yuv420p conversion of render output."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from synctalk.errors import InputError
from synctalk.render.banks import CHUNK, FrameBank, start_loader
from synctalk.render.output import rgb_to_yuv420


def _frames(ids, h=4, w=6):
    return [np.full((h, w, 3), i % 251, dtype=np.uint8) for i in ids]


def test_bank_rows_follow_sorted_unique_ids_and_take_returns_them():
    walk = np.array([0, 1, 2, 5, 7, 5, 2, 1], dtype=np.int64)
    bank = FrameBank(walk, (4, 6, 3), "cpu", extra=lambda chunk: chunk[:, 0, 0, :1].astype(np.int64) * 10)
    bank.load(_frames(np.unique(walk)))
    assert bank.complete
    got = bank.take(torch.from_numpy(walk), walk)
    assert got[:, 0, 0, 0].tolist() == walk.tolist()
    assert bank.take_extra(torch.from_numpy(walk), walk)[:, 0].tolist() == (walk * 10).tolist()
    with pytest.raises(RuntimeError, match="not loaded"):
        bank.take(torch.tensor([3]), np.array([3]))


def test_take_waits_only_for_its_own_rows():
    ids = np.arange(3 * CHUNK)
    bank = FrameBank(ids, (4, 6, 3), "cpu")
    release = threading.Event()

    def slow_frames():
        for i, frame in zip(ids, _frames(ids)):
            if i == 2 * CHUNK:
                release.wait(10)        # the last chunk is held back until the test lets it go
            yield frame

    thread = start_loader(bank, slow_frames())
    early = np.arange(5, 5 + CHUNK)       # rows of the first two chunks
    t0 = time.perf_counter()
    got = bank.take(torch.from_numpy(early), early)
    assert time.perf_counter() - t0 < 5 and not bank.complete
    assert got[:, 0, 0, 0].tolist() == early.tolist()
    release.set()
    late = np.array([3 * CHUNK - 1])
    assert int(bank.take(torch.from_numpy(late), late)[0, 0, 0, 0]) == 3 * CHUNK - 1
    thread.join(5)
    assert bank.complete


def test_loader_errors_and_short_files_reach_the_render_thread():
    bank = FrameBank(np.arange(10), (4, 6, 3), "cpu", name="torso.mp4")
    start_loader(bank, iter(_frames(range(4)))).join(5)   # the file ends after 4 frames
    with pytest.raises(InputError, match="torso.mp4 has fewer frames"):
        bank.take(torch.tensor([9]), np.array([9]))
    # Rows that did arrive are still served.
    assert int(bank.take(torch.tensor([2]), np.array([2]))[0, 0, 0, 0]) == 2

    def broken():
        yield _frames([0])[0]
        raise OSError("decoder failed")

    bank = FrameBank(np.arange(3), (4, 6, 3), "cpu")
    start_loader(bank, broken()).join(5)
    with pytest.raises(OSError, match="decoder failed"):
        bank.wait()


def test_yuv420_matches_pyav_swscale_conversion():
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    # Smooth colours plus noise, like a rendered frame (2x2 chroma means are then well defined).
    yy, xx = np.mgrid[0:64, 0:96] / 64.0
    base = np.stack([np.sin(3 * xx) * 0.4 + 0.5, yy * 0.8 + 0.1, np.cos(2 * xx * yy) * 0.3 + 0.4], -1)
    rgb = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
    rgb8 = (rgb * 255 + 0.5).astype(np.uint8)
    ours = rgb_to_yuv420(torch.from_numpy(rgb8.astype(np.float32) / 255)[None])[0].numpy()
    ref = av.VideoFrame.from_ndarray(rgb8, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert ours.shape == ref.shape == (96, 96)
    d = np.abs(ours.astype(int) - ref.astype(int))
    assert d[:64].max() <= 1                      # luma: rounding only
    assert d[64:].mean() < 1.0 and d[64:].max() <= 4   # chroma: swscale's filter vs a 2x2 mean
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv420(torch.zeros(1, 5, 4, 3))
