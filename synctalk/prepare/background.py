"""Stage `background`: clean background plate + per-frame torso images (head removed, neck inpainted).

Outputs (see docs/subject-format.md):
  background.png     the clean plate: every pixel taken from the sampled frame where it was background and
                     farthest from the person (the original's max-distance rule, with distance transforms
                     instead of kd-trees); pixels never seen far enough from the person are inpainted.
  torso.mp4          each frame with the head (face + hair) replaced by the plate and the neck extended
                     upward under where the head was; everything else shows the plate.
  torso_alpha.npz    neck ∪ torso ∪ inpainted pixels, 0/255 per frame (maskcodec).

The plate pass converts only every ``sample_every``-th frame; the torso pass streams frame by frame, so
memory does not grow with the video length.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from synctalk import subject as S
from synctalk.errors import StageError
from synctalk.io.atomic import write_bytes
from synctalk.io.video import VideoWriter, iter_frames
from synctalk.log import get_logger, progress
from synctalk.prepare.context import StageContext
from synctalk.prepare.inpaint import extend_columns_upward, fill_unseen
from synctalk.prepare.maskcodec import MaskReader, MaskWriter

log = get_logger("prepare.background")
T = TypeVar("T")


@dataclass(frozen=True)
class BackgroundConfig:
    sample_every: int = 10     # frames sampled for the background plate
    neck_inpaint_px: int = 53  # how far the neck is extended upward under the removed head
    # A plate pixel is trusted only if, in the frame it came from, it was this far (px) from the person:
    # parsing edges are soft, so colours right beside the person may still be hair or shoulder.
    min_distance_px: float = 5.0
    neck_dilate_px: int = 3    # vertical dilation of the neck before finding its top (as the original)
    neck_push_down_px: int = 4  # the neck top colour is sampled this far below the top (avoids the jaw edge)
    torso_inpaint_px: int = 9  # torso columns touching the head are extended this far upward ...
    torso_darken: float = 0.98  # ... darkening by this factor per pixel (the original's rule)
    blur_px: int = 5           # Gaussian blur kernel over inpainted pixels (hides vertical streaks)
    # The background is reported as moving when the 75th percentile of the per-pixel colour standard
    # deviation (0..255 levels) of trusted background pixels across the samples exceeds this
    # (a static broadcast clip measures ~2.6, a drifting one 30+).
    motion_threshold: float = 6.0


# ----------------------------------------------------------------------------------------------------
# Pure per-frame functions (reused by training / evaluation code)
# ----------------------------------------------------------------------------------------------------

def composite_gt(frame: np.ndarray, labels: np.ndarray, plate: np.ndarray, halo_px: int = 0) -> np.ndarray:
    """The training target ("gt_imgs" in the original): the frame with its background replaced by the plate.

    ``halo_px`` > 0 keeps the frame's own colour on background pixels within that distance of the head
    (face + hair). The real hair edge reaches a few pixels past the parsing's head mask: on the anchor
    clip the frame differs from the plate by 18 dB PSNR one pixel outside the mask, 22 dB at 2 px, 26 dB
    at 3 px and 31 dB at 4 px, reaching the plate's noise floor (36-37 dB) from 5 px on (BENCHMARKS.md,
    "The head outline in the training target"). Cutting there pastes a hard edge that moves with the
    mask's frame-to-frame jitter into the target; 5 px out the cut is invisible."""
    background = labels == S.LABEL_BACKGROUND
    if halo_px > 0:
        head = S.head_mask(labels).astype(np.uint8)
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * halo_px + 1, 2 * halo_px + 1))
        background = background & (cv2.dilate(head, disk) == 0)
    return np.where(background[..., None], plate, frame)


def torso_image(frame: np.ndarray, labels: np.ndarray, plate: np.ndarray,
                cfg: BackgroundConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The frame without its head, over the plate: returns (rgb uint8 HxWx3, alpha uint8 HxW in {0, 255}).

    Neck and torso keep the frame's pixels. Where the head sat on the neck (or torso), those columns are
    extended upward into the head region: the neck with a colour blended from its top colour toward its
    mean colour (SyncTalk's rule), the torso with its top colour slowly darkened (ER-NeRF's rule); the
    extension is blurred. Every other pixel, including the rest of the head, shows the plate."""
    cfg = cfg or BackgroundConfig()
    labels = np.asarray(labels, dtype=np.uint8)  # the wrap-around trick below needs unsigned 8-bit ids
    # Label ids are 0..4 with the head = {1, 2} and the body = {3, 4}: a uint8 subtraction (wrapping below
    # zero) and one compare per mask, instead of two compares and an OR.
    head = (labels - np.uint8(S.LABEL_FACE)) <= np.uint8(S.LABEL_HAIR - S.LABEL_FACE)
    body = (labels - np.uint8(S.LABEL_NECK)) <= np.uint8(S.LABEL_TORSO - S.LABEL_NECK)
    neck = labels == S.LABEL_NECK
    torso = labels == S.LABEL_TORSO
    # cv2.copyTo with a mask: ~0.05 ms on a 512² frame where np.where on HxWx3 took ~4 ms (measured).
    rgb = cv2.copyTo(frame, body.view(np.uint8), plate.copy())

    inpainted = np.zeros(labels.shape, bool)
    has_head = bool(head.any())
    if has_head and torso.any():
        # ER-NeRF's short torso extension: fills the gap between a shoulder and a removed jaw/hair.
        extend_columns_upward(rgb, inpainted, part=torso, head=head, frame=frame, length=cfg.torso_inpaint_px,
                              push_down=0, darken=cfg.torso_darken, target_colour=None)
    if has_head and neck.any():
        # Dilating vertically first (the original's 3 iterations of a 3x1 element) closes one-pixel gaps
        # between neck and jaw left by the parser, so more columns count as "head sits on the neck".
        k = 2 * cfg.neck_dilate_px + 1
        neck_grown = cv2.dilate(neck.view(np.uint8), np.ones((k, 1), np.uint8)).view(bool)
        extend_columns_upward(rgb, inpainted, part=neck_grown, head=head, frame=frame,
                              length=cfg.neck_inpaint_px, push_down=cfg.neck_push_down_px, darken=1.0,
                              target_colour=_masked_mean(frame, neck))
    if cfg.blur_px > 1 and inpainted.any():
        _blur_where(rgb, inpainted, cfg.blur_px)

    # Outside body ∪ inpainted, rgb still holds the plate: nothing to composite.
    alpha = (body | inpainted).view(np.uint8) * np.uint8(255)
    return rgb, alpha


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[0])
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, mask.shape[1])
    return slice(y0, y1), slice(x0, x1)


def _masked_mean(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB of ``frame`` over a non-empty ``mask`` (computed on the mask's bounding box only)."""
    ys, xs = _bounding_box(mask)
    return np.array(cv2.mean(frame[ys, xs], mask[ys, xs].view(np.uint8))[:3], np.float32)


def _blur_where(rgb: np.ndarray, mask: np.ndarray, ksize: int) -> None:
    """Replace ``rgb`` by its Gaussian blur inside ``mask`` (in place); blurs only the mask's bounding box."""
    ys, xs = _bounding_box(mask, pad=ksize)
    window = rgb[ys, xs]
    blurred = cv2.GaussianBlur(window, (ksize, ksize), 0)
    np.copyto(window, blurred, where=mask[ys, xs, None])


# ----------------------------------------------------------------------------------------------------
# The clean plate
# ----------------------------------------------------------------------------------------------------

class PlateBuilder:
    """Streams (frame, labels) samples in; ``finish`` returns the plate and how trustworthy it is.

    Per pixel it keeps the colour from the sample where the pixel was background and farthest from the
    person (a running maximum of per-frame distance transforms), and running sums of the colours of
    trusted background observations, whose spread tells whether the background moves."""

    def __init__(self, height: int, width: int, min_distance_px: float = 5.0):
        self.min_distance_px = float(min_distance_px)
        self.best_distance = np.zeros((height, width), np.float32)
        self.plate = np.zeros((height, width, 3), np.uint8)
        # The motion statistic is a percentile over many pixels, so every 2nd pixel in each direction is
        # enough (4x less work per sample). float64: sums of squares over hundreds of samples lose the variance
        # in float32.
        sub_h, sub_w = (height + 1) // 2, (width + 1) // 2
        self._sum = np.zeros((sub_h, sub_w, 3), np.float64)
        self._sum_sq = np.zeros((sub_h, sub_w, 3), np.float64)
        self._count = np.zeros((sub_h, sub_w), np.int32)
        self.samples = 0

    def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
        background = (labels == S.LABEL_BACKGROUND).view(np.uint8)
        # Distance of every background pixel to the nearest non-background pixel (0 on the person).
        # With no person in the frame OpenCV returns FLT_MAX everywhere, i.e. "as far as possible".
        distance = cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_5)
        farther = distance > self.best_distance
        cv2.copyTo(frame, farther.view(np.uint8), self.plate)  # in place: same size and type
        np.maximum(self.best_distance, distance, out=self.best_distance)

        trusted = distance[::2, ::2] > self.min_distance_px
        values = frame[::2, ::2].astype(np.float64)
        values[~trusted] = 0.0
        self._sum += values
        self._sum_sq += values * values
        self._count += trusted
        self.samples += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Returns (plate uint8 HxWx3, unseen bool HxW, motion_stat).

        ``unseen`` pixels were never far enough from the person and are inpainted from their surroundings.
        ``motion_stat`` is the 75th percentile, over pixels seen at least 3 times, of the per-pixel colour
        standard deviation (levels, averaged over RGB). A percentile rather than the mean, because parsing
        errors at the person's edge inflate a few percent of pixels; the 75th still reacts when a quarter
        of the visible background moves. Measured: 2.6-2.7 on the static 71-s anchor clip,
        0.3 on a static synthetic scene, 30+ when a textured background drifts 1 px per frame."""
        unseen = self.best_distance <= self.min_distance_px
        plate = fill_unseen(self.plate, unseen) if unseen.any() else self.plate.copy()

        seen_often = self._count >= 3
        if seen_often.any():
            n = self._count[seen_often][:, None].astype(np.float64)
            mean = self._sum[seen_often] / n
            var = np.maximum(self._sum_sq[seen_often] / n - mean * mean, 0.0)
            motion_stat = float(np.percentile(np.sqrt(var).mean(axis=1), 75))
        else:
            motion_stat = 0.0
        return plate, unseen, motion_stat


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------

def run(ctx: StageContext) -> dict[str, Any]:
    cfg: BackgroundConfig = ctx.config.background
    n_frames, height, width = int(ctx.fact("n_frames")), int(ctx.fact("height")), int(ctx.fact("width"))
    fps = float(ctx.fact("fps"))
    frames_path, parsing_path = ctx.path(S.FRAMES), ctx.path(S.PARSING)
    for p in (frames_path, parsing_path):
        if not p.is_file():
            raise StageError(f"background: {p.name} is missing; re-run the decode and parsing stages")
    if cfg.sample_every < 1 or cfg.neck_inpaint_px < 1:
        raise StageError("background: sample_every and neck_inpaint_px must be at least 1")

    with MaskReader(parsing_path) as parsing:
        if parsing.shape != (n_frames, height, width):
            raise StageError(f"background: {S.PARSING} holds {parsing.shape} label maps, expected "
                             f"{(n_frames, height, width)}; re-run the parsing stage")
        started = time.perf_counter()
        plate, unseen, motion_stat = _build_plate(frames_path, parsing, cfg, n_frames)
        _write_png(ctx.path(S.BACKGROUND), plate)
        unseen_fraction = float(unseen.mean())
        moving = motion_stat > cfg.motion_threshold
        _report_plate(unseen_fraction, motion_stat, moving, cfg, time.perf_counter() - started)
        started = time.perf_counter()
        _write_torso(frames_path, parsing, plate, cfg, ctx.path(S.TORSO), ctx.path(S.TORSO_ALPHA), fps,
                     crf=int(ctx.config.decode.crf), preset=str(ctx.config.decode.x264_preset))
        log.debug("torso images: %d frames in %.1f s", n_frames, time.perf_counter() - started)
    return {"background": {"moving": bool(moving), "unseen_fraction": round(unseen_fraction, 5),
                           "motion_stat": round(motion_stat, 3)}}


def _report_plate(unseen_fraction: float, motion_stat: float, moving: bool, cfg: BackgroundConfig,
                  seconds: float) -> None:
    log.info("background plate: %.1f%% never visible (inpainted), motion %.2f levels (%.1f s)",
             100 * unseen_fraction, motion_stat, seconds)
    if moving:
        log.warning("background moves (colour spread %.1f levels > %.1f across samples): the clean "
                    "plate is blurred or wrong; use footage from a static camera with a static background",
                    motion_stat, cfg.motion_threshold)
    if unseen_fraction > 0.6:
        log.warning("%.0f%% of the background is never visible (the person covers it in every sampled "
                    "frame) and was inpainted; torso images may show smeared background there",
                    100 * unseen_fraction)


def _build_plate(frames_path: Path, parsing: MaskReader, cfg: BackgroundConfig,
                 n_frames: int) -> tuple[np.ndarray, np.ndarray, float]:
    _, height, width = parsing.shape
    builder = PlateBuilder(height, width, cfg.min_distance_px)
    n_samples = (n_frames + cfg.sample_every - 1) // cfg.sample_every
    # closing(): leaving the loop early (or on an error) stops the decoding thread at once.
    with contextlib.closing(_prefetched(_iter_sampled(frames_path, cfg.sample_every))) as samples:
        for t, frame in progress(samples, "background plate", total=n_samples, unit="frame"):
            if t >= n_frames:
                break
            builder.add(frame, parsing[t])
    if builder.samples == 0:
        raise StageError(f"background: could not read any frame of {frames_path.name}")
    return builder.finish()


def _write_torso(frames_path: Path, parsing: MaskReader, plate: np.ndarray, cfg: BackgroundConfig,
                 torso_path: Path, alpha_path: Path, fps: float, crf: int, preset: str) -> None:
    n_frames, height, width = parsing.shape
    alpha_writer = MaskWriter(alpha_path, height, width)
    written = 0
    with VideoWriter(torso_path, fps=fps, crf=crf, preset=preset) as video:

        def store(item: tuple[np.ndarray, np.ndarray]) -> None:
            video.write(item[0])
            alpha_writer.add(item[1])

        # Three threads share the work: decoding (prefetch), the per-frame compositing here, and
        # encoding + alpha compression (the sink); FFmpeg, libx264 and zlib release the GIL.
        with _Sink(store) as sink, contextlib.closing(_prefetched(iter_frames(frames_path))) as frames:
            for t, frame in enumerate(progress(frames, "torso images", total=n_frames, unit="frame")):
                if t >= n_frames:
                    raise StageError(f"background: {frames_path.name} has more frames than the {n_frames} "
                                     f"of {S.PARSING}; re-run the parsing stage")
                sink.put(torso_image(frame, parsing[t], plate, cfg))
                written += 1
        if written != n_frames:
            raise StageError(f"background: {frames_path.name} has {written} frames, {S.PARSING} has "
                             f"{n_frames}; re-run the decode stage")
    alpha_writer.close()


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise StageError(f"background: could not encode {path.name}")
    write_bytes(path, data.tobytes())


def load_plate(path: str | Path) -> np.ndarray:
    """Read background.png as RGB uint8."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise StageError(f"cannot read background plate {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------------
# Frame reading helpers
# ----------------------------------------------------------------------------------------------------

_END = object()


def _prefetched(items: Iterator[T], depth: int = 8) -> Iterator[T]:
    """Iterate ``items`` in a worker thread, ``depth`` items ahead.

    Video decoding runs in FFmpeg with the GIL released, so it overlaps with the per-frame numpy/cv2 work
    and the encoder on the second core. A failure in the worker is re-raised here; leaving the loop early
    stops the worker (and closes ``items``) instead of leaking a blocked thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(_END)
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            put(_Failure(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="background-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _iter_sampled(path: Path, step: int):
    """Yield (index, RGB frame) for every ``step``-th frame; skipped frames are decoded (H.264 needs
    that) but never converted to RGB, which is most of the per-frame cost."""
    try:
        import av
    except ImportError:
        for t, frame in enumerate(iter_frames(path)):
            if t % step == 0:
                yield t, frame
        return
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for t, frame in enumerate(container.decode(stream)):
            if t % step == 0:
                yield t, frame.to_ndarray(format="rgb24")


class _Sink:
    """Hands items to ``handle`` in a worker thread through a bounded queue (a context manager).

    Leaving the block waits for the queue to drain; a failure in ``handle`` is re-raised in the caller
    (at the next ``put`` or on exit), and a failure in the caller stops the worker without waiting."""

    def __init__(self, handle: Callable[[Any], None], depth: int = 8):
        self._handle = handle
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._worker = threading.Thread(target=self._work, name="background-encode", daemon=True)

    def __enter__(self) -> "_Sink":
        self._worker.start()
        return self

    def _work(self) -> None:
        while True:
            item = self._slots.get()
            if item is _END or self._abort.is_set():
                return
            try:
                self._handle(item)
            except BaseException as e:
                self._error = e
                return

    def put(self, item: Any) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._slots.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._worker.is_alive():
                    raise StageError("background: the encoder thread stopped unexpectedly") from self._error

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort.set()
        while self._worker.is_alive():  # the sentinel may wait for a free slot
            try:
                self._slots.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        self._worker.join()
        if exc_type is None and self._error is not None:
            raise self._error
