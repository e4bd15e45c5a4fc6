"""Stage `decode`: source video -> frames.mp4 (25 fps, square working size) + audio.wav (16 kHz mono).

One streaming pass: decode -> resample to ``fps`` by timestamps -> fixed head crop / scale -> H.264.
Memory does not grow with the video's length (only the 16 kHz audio is held, ~4 MB per minute).

Timing contract (what every later stage relies on):
- t0 is the presentation time of the first decoded video frame. Output frame k shows the source frame
  whose display interval [t_i, t_{i+1}) contains t0 + k/fps ("hold the last frame"); exact rational
  arithmetic on pts * time_base, so a 25 fps source maps 1:1 and 30/50/60/24 fps or VFR input is
  resampled by time, never by dropping every n-th frame.
- The source duration ends at the last frame's time plus its duration (its own ``duration`` field,
  else the previous frame interval), and n_frames = floor(duration * fps): a partial last output
  frame is dropped, so frames never extend past the source.
- audio.wav starts at t0 too (audio that starts later is zero-padded in front, earlier is trimmed)
  and holds exactly n_frames / fps seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.io import audio as A
from synctalk.io.video import VideoWriter, display_rotation, ffmpeg_reason, open_media, upright_rgb
from synctalk.log import get_logger, progress
from synctalk.prepare.context import StageContext
from synctalk.prepare.crop import Crop, crop_from_samples

log = get_logger("prepare.decode")


@dataclass(frozen=True)
class DecodeConfig:
    size: int = 512            # working resolution (square)
    fps: float = 25.0
    sample_rate: int = 16000
    # Square crop side = crop_scale * MediaPipe face box size (when the input is not size x size).
    # 1.95 reproduces the framing of the original 512x512 SyncTalk/GeneFace crops (measured 1.87-2.0).
    crop_scale: float = 1.95
    crf: int = 16              # H.264 quality of frames.mp4 / torso.mp4 (lower = better, bigger)
    x264_preset: str = "veryfast"
    face_center_y: float = 0.56  # face box centre, as a fraction of the crop side from the top (measured)
    crop_samples: int = 24       # frames spread over the video on which the face is detected
    min_size: int = 128          # smallest usable source short side / crop side, in pixels


# After a seek, decode at most this many frames forward to reach the sample time: keeps the cost of
# sampling bounded for long GOPs (the sample then lands a little before its target, which is harmless).
_MAX_FORWARD_DECODE = 15


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: DecodeConfig = ctx.config.decode
    fps = Fraction(cfg.fps).limit_denominator(1001)
    name = ctx.source.name
    if cfg.size % 2 or cfg.size < cfg.min_size:
        raise InputError(f"decode.size must be even and at least {cfg.min_size} (got {cfg.size})")
    probe = _probe(ctx.source)
    # Audio first: it is cheap, and a video without speech is useless, so fail before the long pass.
    samples, audio_info = A.decode_audio(ctx.source, cfg.sample_rate)

    width, height = probe["width"], probe["height"]
    if min(width, height) < cfg.min_size:
        raise InputError(f"{name} is too small ({width}x{height}); synctalk needs at least "
                         f"{cfg.min_size} px on the short side, ideally {cfg.size}")
    crop: Crop | None = None
    crop_stats: dict[str, Any] = {}
    if (width, height) != (cfg.size, cfg.size):
        sampled = _sample_frames(ctx.source, cfg.crop_samples)
        crop, crop_stats = crop_from_samples(sampled, width, height, cfg.crop_scale, cfg.face_center_y, name)
        if crop.side < cfg.min_size:
            raise InputError(f"{name}: the face is too small (crop {crop.side} px < {cfg.min_size} px); "
                             "use a closer or higher-resolution video")
        if crop.side < cfg.size:
            log.warning("the head crop is %d px, smaller than the working size %d: upscaling loses detail",
                        crop.side, cfg.size)
        log.info("head crop x0=%d y0=%d side=%d of %dx%d (face in %d/%d sampled frames)", crop.x0, crop.y0,
                 crop.side, width, height, crop_stats["face_frames"], crop_stats["sampled_frames"])

    timing = _encode_frames(ctx, fps, crop, probe)
    n_frames = timing["n_frames"]

    n_samples = int(round(n_frames * cfg.sample_rate / fps))
    offset = int(round((audio_info["start_seconds"] - timing["t0"]) * cfg.sample_rate))
    samples = A.fit_length(samples, n_samples, offset)
    rms_dbfs, peak = A.loudness(samples)
    silent = A.is_silent(rms_dbfs, peak)
    if silent:
        log.warning("the audio track is silent (%.0f dBFS, peak %.4f): lip sync cannot be learned from it",
                    rms_dbfs, peak)
    A.write_wav(ctx.path(S.AUDIO), samples, cfg.sample_rate)

    if probe["rotation"]:
        log.info("the video is stored turned; frames are rotated %d degrees counter-clockwise to stand upright",
                 probe["rotation"])
    source = {"path": str(ctx.source), "width": width, "height": height, "rotation": probe["rotation"],
              "fps": round(probe["fps"], 4) if probe["fps"] else None, "vfr": timing["vfr"],
              "n_frames": timing["n_source_frames"], "duration": round(timing["duration"], 4),
              "video_codec": probe["codec"]}
    log.info("decoded %d source frames (%.2f s, %s%s) -> %d frames at %g fps", timing["n_source_frames"],
             timing["duration"], f"{probe['fps']:.3f} fps" if probe["fps"] else "unknown fps",
             ", VFR" if timing["vfr"] else "", n_frames, float(fps))
    return {
        "n_frames": n_frames, "fps": float(fps), "width": cfg.size, "height": cfg.size,
        "source": source,
        "crop": None if crop is None else {**crop.to_json(), **crop_stats},
        "audio": {"sample_rate": cfg.sample_rate, "seconds": n_samples / cfg.sample_rate,
                  "source_codec": audio_info["codec"], "source_rate": audio_info["source_rate"],
                  "source_channels": audio_info["source_channels"], "silent": silent,
                  "rms_dbfs": round(rms_dbfs, 2)},
    }


def _open(path: Path):
    """Open ``path`` with PyAV; (container, video stream). InputError for anything unusable."""
    container = open_media(path, "video")
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        container.close()
        raise InputError(f"{path.name} has no video stream")
    stream = streams[0]
    stream.thread_type = "AUTO"
    return container, stream


def _is_cover_art(stream) -> bool:
    """An MP3/M4A's embedded album picture shows up as a one-frame 'video' stream."""
    import av

    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    return flag is not None and bool(stream.disposition & flag)


def _probe(path: Path) -> dict[str, Any]:
    container, stream = _open(path)
    with container:
        if not container.streams.audio:
            raise InputError(f"{path.name}: no audio track: synctalk learns lip sync from the video's speech")
        rate = stream.average_rate or stream.base_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        width, height = stream.codec_context.width, stream.codec_context.height
        rotation = _first_frame_rotation(container, stream)
        if rotation in (90, 270):  # a phone video shot upright: the frames are stored sideways
            width, height = height, width
        return {"width": width, "height": height, "rotation": rotation,
                "fps": float(rate) if rate else None, "codec": stream.codec_context.name,
                "frames": int(stream.frames or 0), "duration": duration}


def _first_frame_rotation(container, stream) -> int:
    """The display rotation of the first decodable frame (0 when none decodes: the main pass reports it)."""
    import av

    try:
        for frame in container.decode(stream):
            return display_rotation(frame)
    except av.FFmpegError:
        pass
    return 0


def _sample_frames(path: Path, count: int) -> list[np.ndarray]:
    """About ``count`` RGB frames spread evenly over the video, by seeking (cheap on long videos)."""
    import av

    container, stream = _open(path)
    samples: list[np.ndarray] = []
    seen: set[int] = set()
    with container:
        tb = stream.time_base
        start = stream.start_time or 0
        duration = stream.duration
        if duration is None and container.duration is not None:
            duration = int(container.duration / 1_000_000 / tb)
        try:
            if not duration:
                raise av.FFmpegError(0, "unknown duration")  # -> sequential fallback below
            for j in range(count):
                target = start + int(duration * (j + 0.5) / count)
                container.seek(target, stream=stream, backward=True)
                chosen = None
                for n, frame in enumerate(container.decode(stream)):
                    chosen = frame
                    if frame.pts is None or frame.pts >= target or n >= _MAX_FORWARD_DECODE:
                        break
                if chosen is not None and chosen.pts not in seen:
                    seen.add(chosen.pts)
                    samples.append(upright_rgb(chosen))
        except av.FFmpegError:
            samples = []
    if not samples:  # unseekable or duration unknown: one sequential pass, keep every k-th frame
        samples = _sample_sequential(path, count)
    return samples


def _sample_sequential(path: Path, count: int) -> list[np.ndarray]:
    import av

    container, stream = _open(path)
    total = max(int(stream.frames or 0), count)
    step = max(1, total // count)
    frames: list[np.ndarray] = []
    with container:
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % step == step // 2 and len(frames) < count:
                    frames.append(upright_rgb(frame))
        except av.FFmpegError as e:
            raise InputError(f"{path.name}: video data is corrupt ({ffmpeg_reason(e)})") from None
    return frames


class _TimestampResampler:
    """Turns source frames with presentation times into output frame slots k = 0, 1, ... at ``fps``.

    Feed frames in display order; each ``push`` yields (k, frame_to_show) for every output slot whose
    time falls before the pushed frame's time. ``finish`` emits the slots up to the end of the video."""

    def __init__(self, fps: Fraction, time_base: Fraction, fallback_interval: Fraction):
        self.fps = fps
        self.time_base = time_base
        self.fallback_interval = fallback_interval  # seconds; used when a frame has no pts/duration
        self.t0_pts: int | None = None
        self.prev = None
        self.prev_time = Fraction(0)   # seconds since t0
        self.prev_duration: Fraction | None = None
        self.next_k = 0
        self.n_source = 0
        self.n_dropped = 0            # frames with non-increasing pts (broken muxers), skipped
        self.min_dt: Fraction | None = None
        self.max_dt: Fraction | None = None

    def push(self, frame) -> Iterator[tuple[int, Any]]:
        if frame.pts is None:
            t = self.prev_time + self.fallback_interval if self.prev is not None else Fraction(0)
        else:
            if self.t0_pts is None:
                self.t0_pts = frame.pts
            t = Fraction(frame.pts - self.t0_pts) * self.time_base
        if self.prev is not None:
            dt = t - self.prev_time
            if dt <= 0:
                self.n_dropped += 1
                return
            self.min_dt = dt if self.min_dt is None else min(self.min_dt, dt)
            self.max_dt = dt if self.max_dt is None else max(self.max_dt, dt)
            yield from self._emit_before(t)
        self.prev, self.prev_time = frame, t
        self.prev_duration = Fraction(frame.duration) * self.time_base if getattr(frame, "duration", 0) else None
        self.n_source += 1

    def finish(self) -> Iterator[tuple[int, Any]]:
        if self.prev is None:
            return
        # n_frames = floor(duration * fps): the slot that would start inside the last frame but end
        # after the video does is dropped, so frames never extend past the source.
        n_frames = math.floor(self.end_time * self.fps)
        while self.next_k < n_frames:
            yield self.next_k, self.prev
            self.next_k += 1

    @property
    def end_time(self) -> Fraction:
        # The last frame lasts its own duration if the container says so, else the shortest interval
        # seen (the regular frame interval; a VFR pause is not extended past the end).
        last = self.prev_duration or self.min_dt or self.fallback_interval
        return self.prev_time + last

    def _emit_before(self, t: Fraction) -> Iterator[tuple[int, Any]]:
        # Slot k (time k/fps) is shown by the held frame while k/fps < t, i.e. k < t * fps.
        end_k = math.ceil(t * self.fps)
        while self.next_k < end_k:
            yield self.next_k, self.prev
            self.next_k += 1

    @property
    def vfr(self) -> bool:
        if self.min_dt is None:
            return False
        # Timestamps are integers in time_base units, so a CFR stream whose interval is not a whole
        # number of ticks alternates by one tick (30 fps in 1/12800); only more than that is VFR.
        tolerance = max(2 * self.time_base, (self.min_dt + self.max_dt) / 2 * Fraction(1, 50))
        return self.max_dt - self.min_dt > tolerance


def _encode_frames(ctx: StageContext, fps: Fraction, crop: Crop | None, probe: dict[str, Any]) -> dict[str, Any]:
    import av

    cfg: DecodeConfig = ctx.config.decode
    container, stream = _open(ctx.source)
    fallback = Fraction(1) / Fraction(probe["fps"]).limit_denominator(1001) if probe["fps"] else 1 / fps
    resampler = _TimestampResampler(fps, stream.time_base or Fraction(1, 90000), fallback)
    frames_out = 0
    with container, VideoWriter(ctx.path(S.FRAMES), fps=fps, crf=cfg.crf, preset=cfg.x264_preset,
                                threads=os.cpu_count()) as writer:
        def emit(slots: Iterator[tuple[int, Any]]) -> None:
            nonlocal frames_out
            last_source, last_out = None, None
            for _, frame in slots:
                if frame is not last_source:  # crop/scale each source frame once, even when held
                    last_source, last_out = frame, _to_working(frame, crop, cfg.size)
                # A held av.VideoFrame is re-sent with a new pts: safe, avcodec_send_frame takes its
                # own reference of the frame (pts included) on each send.
                writer.write(last_out)
                frames_out += 1

        try:
            for frame in progress(container.decode(stream), desc="decode", total=probe["frames"] or None,
                                  unit="frame"):
                emit(resampler.push(frame))
            emit(resampler.finish())
        except av.FFmpegError as e:
            raise InputError(f"{ctx.source.name}: video data is corrupt or truncated near source frame "
                             f"{resampler.n_source} ({ffmpeg_reason(e)})") from None
        if resampler.n_source == 0:
            raise InputError(f"{ctx.source.name}: the video stream has no decodable frames")
        if probe["frames"] and resampler.n_source < 0.9 * probe["frames"]:
            raise InputError(f"{ctx.source.name} is truncated: decoded {resampler.n_source} of "
                             f"{probe['frames']} video frames")
        if frames_out == 0:
            raise InputError(f"{ctx.source.name} is too short: under one frame at {float(fps):g} fps")
    if resampler.n_dropped:
        log.warning("skipped %d source frames with out-of-order timestamps", resampler.n_dropped)
    return {"n_frames": frames_out, "t0": float(Fraction(resampler.t0_pts or 0) * resampler.time_base),
            "duration": float(resampler.end_time), "n_source_frames": resampler.n_source,
            "vfr": resampler.vfr}


def _to_working(frame, crop: Crop | None, size: int):
    """The working-size picture of one source frame: the av.VideoFrame itself when no crop or scale is
    needed (no RGB round trip: the fast path for upright size x size sources), else a cropped, scaled,
    upright RGB array."""
    if crop is None and frame.width == size and frame.height == size and display_rotation(frame) == 0:
        return frame
    import cv2

    rgb = upright_rgb(frame)
    if crop is not None:
        rgb = crop.apply(rgb)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    # INTER_AREA averages when shrinking (no aliasing); it degenerates to near-nearest when enlarging,
    # so upscales use bicubic.
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)

