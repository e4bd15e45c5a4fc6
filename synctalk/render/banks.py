"""Device-resident frame banks that fill while the render runs.

A render needs, per walked subject frame, the torso/background image and (for portrait or the head-box
limit) the source frame and masks. Decoding all of them before the first batch cost ~2.5-3.5 s of a
60-s render's start-up on the GPU machine. The walk visits frames in ascending order first
(0, 1, ..., T-1, then back), which is also the order a video decodes in, so each bank is filled by a
loader thread in ascending id order and ``take`` only waits for the rows it needs: the first batch
starts once its 16 frames are in, and decoding (~600+ frames/s) stays ahead of rendering (~250 frames/s).

Rows are assigned to the wanted ids up front (``rows[id]``), so the device tensor is allocated once and
filled in place; a loader copies each chunk from pinned memory on its own CUDA stream and only then
marks the rows ready, so the render thread never reads a row that is still in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import numpy as np
import torch

from synctalk.errors import InputError

CHUNK = 32   # frames per host->device copy (one pinned buffer, one stream sync)


class FrameBank:
    """uint8 frames [len(wanted), *shape] of the sorted unique ``wanted`` subject frame ids on ``device``,
    filled in ascending id order by ``fill``. ``extra`` (optional) derives a per-frame array from each
    host chunk (e.g. the head box of a label map), kept beside the frames on the device."""

    def __init__(self, wanted: np.ndarray, shape: tuple[int, ...], device: torch.device | str,
                 extra: Callable[[np.ndarray], np.ndarray] | None = None, name: str = "frames") -> None:
        self.wanted = np.unique(np.asarray(wanted, dtype=np.int64))
        if self.wanted.size == 0 or self.wanted[0] < 0:
            raise ValueError("a frame bank needs at least one non-negative frame id")
        self.name = name
        self.device = torch.device(device)
        stop = int(self.wanted[-1]) + 1
        self.rows_np = np.full(stop, -1, dtype=np.int64)
        self.rows_np[self.wanted] = np.arange(self.wanted.size)
        self.rows = torch.from_numpy(self.rows_np).to(self.device)
        self.data = torch.empty((self.wanted.size, *shape), dtype=torch.uint8, device=self.device)
        self._extra_fn = extra
        self.extra: torch.Tensor | None = None
        self._filled = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    # ------------------------------------------------------------------ loader side
    @property
    def complete(self) -> bool:
        return self._filled == self.wanted.size

    def fill(self, frames: list[np.ndarray] | np.ndarray) -> None:
        """Append the next rows (frames of the next wanted ids, in order)."""
        host = np.ascontiguousarray(np.stack(frames) if isinstance(frames, list) else frames)
        a, b = self._filled, self._filled + host.shape[0]
        if b > self.wanted.size:
            raise ValueError(f"{self.name}: more frames than wanted ids")
        extra = self._extra_fn(host) if self._extra_fn is not None else None
        if extra is not None and self.extra is None:
            self.extra = torch.empty((self.wanted.size, *extra.shape[1:]), dtype=torch.from_numpy(extra).dtype,
                                     device=self.device)
        tensor = torch.from_numpy(host)
        if self._stream is not None:
            tensor = tensor.pin_memory()
            with torch.cuda.stream(self._stream):
                self.data[a:b].copy_(tensor, non_blocking=True)
                if extra is not None:
                    self.extra[a:b].copy_(torch.from_numpy(extra).pin_memory(), non_blocking=True)
            self._stream.synchronize()   # rows are marked ready only once they are on the device
        else:
            self.data[a:b].copy_(tensor)
            if extra is not None:
                self.extra[a:b].copy_(torch.from_numpy(extra))
        with self._cond:
            self._filled = b
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def load(self, frames: Iterable[np.ndarray]) -> None:
        """Fill the whole bank from ``frames`` (one per wanted id, ascending), in chunks; any error (or too
        few frames) is kept and raised to whoever waits on the bank."""
        try:
            chunk: list[np.ndarray] = []
            for frame in frames:
                chunk.append(frame)
                if len(chunk) == CHUNK:
                    self.fill(chunk)
                    chunk = []
            if chunk:
                self.fill(chunk)
            if not self.complete:
                raise InputError(f"{self.name} has fewer frames than the subject says; re-run `synctalk prepare`")
        except BaseException as e:  # surfaced on the render thread by wait/take
            self.fail(e)

    # ------------------------------------------------------------------ render side
    def _rows_for(self, host_ids: np.ndarray) -> np.ndarray:
        host_ids = np.asarray(host_ids, dtype=np.int64)
        inside = (host_ids >= 0) & (host_ids < self.rows_np.size)
        rows = np.where(inside, self.rows_np[np.clip(host_ids, 0, self.rows_np.size - 1)], -1)
        if (rows < 0).any():
            raise RuntimeError(f"{self.name}: a frame was requested that was not loaded")
        return rows

    def wait(self, host_ids: np.ndarray | None = None) -> None:
        """Block until the rows of ``host_ids`` (all rows when None) are on the device."""
        need = self.wanted.size if host_ids is None else int(self._rows_for(host_ids).max()) + 1
        with self._cond:
            while self._filled < need and self._error is None:
                self._cond.wait()
            if self._filled < need:   # the loader failed before these rows
                raise self._error

    def take(self, ids: torch.Tensor, host_ids: np.ndarray | None = None) -> torch.Tensor:
        """Frames of subject ids ``ids`` (device tensor); ``host_ids`` = the same ids on the host (saves a
        device sync; without it the bank waits until it is complete)."""
        self.wait(host_ids)
        return self.data.index_select(0, self.rows[ids])

    def take_extra(self, ids: torch.Tensor, host_ids: np.ndarray | None = None) -> torch.Tensor:
        self.wait(host_ids)
        if self.extra is None:
            raise RuntimeError(f"{self.name} has no per-frame extra")
        return self.extra.index_select(0, self.rows[ids])


def start_loader(bank: FrameBank, frames: Iterable[np.ndarray]) -> threading.Thread:
    """Fill ``bank`` from ``frames`` on a daemon thread (decoders release the GIL)."""
    thread = threading.Thread(target=bank.load, args=(frames,), name=f"synctalk-bank-{bank.name}", daemon=True)
    thread.start()
    return thread
