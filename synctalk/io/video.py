"""Video I/O: read the subject's own files (frames.mp4, torso.mp4), write H.264 MP4s, open user media.

- ``iter_frames(path, start, stop)``: RGB uint8 frames in decode order, turned upright by the file's
  display rotation (``upright_rgb``). Prefers PyAV; falls back to OpenCV (the GPU machine has OpenCV
  but no PyAV; OpenCV applies the rotation itself).
- ``upright_rgb(frame)`` / ``display_rotation(frame)``: phone videos store the sensor's landscape picture
  and a display matrix that players apply (an upright iPhone clip: -90 degrees); face mesh on the
  stored picture would see a sideways face.
- ``VideoWriter``: atomic libx264/yuv420p MP4 writer with optional AAC audio (needs PyAV).
- ``open_media(path, kind)``: ``av.open`` that turns missing/non-media/text/unreadable files into a
  one-line ``InputError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np


def iter_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [start, stop) of a constant-frame-rate video in decode order."""
    try:
        import av  # noqa: F401
    except ImportError:
        yield from _iter_cv2(path, start, stop)
        return
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                yield upright_rgb(frame)


def display_rotation(frame) -> int:
    """Counter-clockwise degrees (0, 90, 180, 270) a player turns this decoded PyAV frame by: its display
    matrix side data (``VideoFrame.rotation``, PyAV >= 14), rounded to a quarter turn; 0 without one."""
    degrees = getattr(frame, "rotation", 0) or 0
    return int(round(degrees / 90.0)) % 4 * 90


def upright_rgb(frame) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a PyAV frame as a player shows it (display rotation applied)."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = display_rotation(frame) // 90
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


# FFmpeg "opens" plain text as an ANSI-art video (tty) or as subtitles; never user media for us.
_TEXT_FORMATS = frozenset({"tty", "lrc", "srt", "ass", "webvtt", "subviewer", "subviewer1", "microdvd",
                           "jacosub", "sami", "realtext", "vplayer", "mpl2", "pjs", "stl", "aqtitle"})


def open_media(path: str | os.PathLike, kind: str = "video"):
    """``av.open`` for a user's input file; InputError (one line) when it is missing, not media or
    unreadable. ``kind`` ("video"/"audio") only words the message."""
    from pathlib import Path

    import av

    from synctalk.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{kind} file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:  # bad metadata encodings raise the latter
        raise InputError(f"{path.name} is not a readable {kind} file ({ffmpeg_reason(e)})") from None
    if container.format.name in _TEXT_FORMATS:
        container.close()
        raise InputError(f"{path.name} is not a readable {kind} file (it is text)")
    return container


def ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's own short reason ("Invalid data found when processing input"), without the path."""
    text = getattr(e, "strerror", None) or str(e)
    return str(text).split(":")[0].strip() or type(e).__name__


def _iter_cv2(path: str | os.PathLike, start: int, stop: int | None) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    try:
        i = 0
        while stop is None or i < stop:
            ok, bgr = cap.read()
            if not ok:
                break
            if i >= start:
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


class VideoWriter:
    """H.264 (libx264, yuv420p) MP4 writer, atomic, with optional mono AAC audio muxed in.

    Use as a context manager; the file appears at ``path`` only if the block finishes without an
    exception (a crash leaves no half-written video)::

        with VideoWriter(out, fps=25, crf=18, audio=samples, sample_rate=16000) as w:
            for rgb in frames:          # HxWx3 uint8 RGB (or an av.VideoFrame)
                w.write(rgb)

    Width and height come from the first frame and must be even (yuv420p halves chroma). ``audio``
    (float32 mono in [-1, 1]) is interleaved with the video as frames arrive and trimmed/padded to
    the video's duration when the writer closes, so the result plays in sync in any player.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, crf: int = 18, preset: str = "veryfast",
                 audio: np.ndarray | None = None, sample_rate: int = 16000, threads: int | None = None,
                 audio_bitrate: int = 96_000):
        from fractions import Fraction

        self.path = path
        self.fps = Fraction(fps).limit_denominator(1001)
        self.crf = int(crf)
        self.preset = preset
        self.audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.sample_rate = int(sample_rate)
        self.threads = threads or os.cpu_count() or 1
        self.audio_bitrate = audio_bitrate
        self.frames_written = 0
        self._audio_done = 0          # samples of ``audio`` already sent to the encoder
        self._container = None
        self._video = None
        self._audio_stream = None
        self._atomic = None

    def __enter__(self) -> "VideoWriter":
        from synctalk.io.atomic import atomic_path

        self._atomic = atomic_path(self.path, suffix=".mp4")
        tmp = self._atomic.__enter__()
        import av

        self._container = av.open(str(tmp), mode="w")
        return self

    def _open_streams(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even frame sizes, got {width}x{height}")
        v = self._container.add_stream("libx264", rate=self.fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.thread_count = self.threads
        v.codec_context.time_base = 1 / self.fps   # frame k has pts k
        v.options = {"crf": str(self.crf), "preset": self.preset}
        self._video = v
        if self.audio is not None:
            a = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
            a.codec_context.bit_rate = self.audio_bitrate
            self._audio_stream = a

    def write(self, frame) -> None:
        """Append one frame: HxWx3 uint8 RGB ndarray, or an av.VideoFrame (any pixel format)."""
        import av

        if not isinstance(frame, av.VideoFrame):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        if self._video is None:
            self._open_streams(frame.width, frame.height)
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1
        self._write_audio_until(self._audio_samples_for(self.frames_written))

    def _audio_samples_for(self, n_frames: int) -> int:
        return int(n_frames * self.sample_rate / self.fps)

    def _write_audio_until(self, n_samples: int) -> None:
        from fractions import Fraction

        import av

        if self._audio_stream is None or n_samples <= self._audio_done:
            return
        chunk = self.audio[self._audio_done:n_samples]
        if chunk.size < n_samples - self._audio_done:  # audio shorter than the video: pad silence
            chunk = np.concatenate([chunk, np.zeros(n_samples - self._audio_done - chunk.size, np.float32)])
        af = av.AudioFrame.from_ndarray(np.clip(chunk, -1, 1).reshape(1, -1), format="flt", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = self._audio_done
        af.time_base = Fraction(1, self.sample_rate)
        for packet in self._audio_stream.encode(af):
            self._container.mux(packet)
        self._audio_done = n_samples

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self.frames_written == 0:
                    raise ValueError(f"no frames were written to {self.path}")
                for packet in self._video.encode(None):
                    self._container.mux(packet)
                if self._audio_stream is not None:
                    self._write_audio_until(self._audio_samples_for(self.frames_written))
                    for packet in self._audio_stream.encode(None):
                        self._container.mux(packet)
        except BaseException as e:
            self._container.close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self._container.close()
        self._atomic.__exit__(exc_type, exc, tb)
        return False
