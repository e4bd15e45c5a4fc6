"""Where rendered frames go: an H.264 + AAC MP4 and/or numbered PNGs, written on a background thread.

Encoding overlaps rendering: the renderer hands uint8 frames to ``FrameSink.put`` and goes on with
the next batch while a worker thread encodes (x264 and zlib release the GIL). The MP4 is written by
``synctalk.io.video.VideoWriter`` (PyAV). Where PyAV is missing (the GPU machine) but an ``ffmpeg``
program is on PATH, raw frames are piped to it instead; with neither, the render refuses up front
with a one-line error that names ``--frames`` as the way out.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("render.output")

QUEUE_FRAMES = 64  # frames waiting for the encoder (~50 MB at 512^2) before the renderer waits

# BT.601 limited-range RGB -> Y'CbCr (R, G, B in [0, 1]; rows Y, Cb, Cr), the matrix swscale uses by
# default for rgb24 -> yuv420p, so the GPU conversion below gives the same MP4 as PyAV's own.
_BT601 = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
_BT601_OFFSET = (16.0, 128.0, 128.0)


def rgb_to_yuv420(frames):
    """[B, H, W, 3] float RGB in [0, 1] (torch, any device; H, W even) -> [B, H*3/2, W] uint8 planar
    yuv420p (Y plane, then Cb and Cr at half resolution, each the mean of a 2x2 block), the layout
    ``av.VideoFrame.from_ndarray(..., format="yuv420p")`` takes. On the GPU this replaces ~1 ms/frame of
    CPU colour conversion in the encoder thread and halves the device->host copy."""
    import torch

    b, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {w}x{h}")
    m = torch.tensor(_BT601, dtype=torch.float32, device=frames.device)
    off = torch.tensor(_BT601_OFFSET, dtype=torch.float32, device=frames.device)
    ycc = torch.einsum("bhwc,kc->bkhw", frames.float().clamp(0, 1), m) + off[None, :, None, None]
    luma = ycc[:, 0].reshape(b, h * w)
    chroma = torch.nn.functional.avg_pool2d(ycc[:, 1:], 2).reshape(b, 2 * (h // 2) * (w // 2))
    planes = torch.cat([luma, chroma], dim=1).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return planes.reshape(b, h * 3 // 2, w)


def mp4_backend() -> str | None:
    """Which MP4 writer is available here: "pyav", "ffmpeg" or None."""
    try:
        import av  # noqa: F401

        return "pyav"
    except ImportError:
        pass
    return "ffmpeg" if shutil.which("ffmpeg") else None


class _FfmpegWriter:
    """VideoWriter's interface over an ffmpeg subprocess (libx264 yuv420p, AAC from a temp WAV)."""

    def __init__(self, path: Path, fps: float, audio: np.ndarray | None, sample_rate: int, crf: int,
                 preset: str) -> None:
        self.path, self.fps, self.audio, self.sample_rate = path, fps, audio, sample_rate
        self.crf, self.preset = crf, preset
        self.proc: subprocess.Popen | None = None
        self.frames_written = 0
        self._tmpdir = tempfile.TemporaryDirectory(prefix="synctalk_ffmpeg_")

    def __enter__(self) -> "_FfmpegWriter":
        return self

    def write(self, frame: np.ndarray) -> None:
        if self.proc is None:
            self._start(frame.shape[1], frame.shape[0])
        self.proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self.frames_written += 1

    def _start(self, width: int, height: int) -> None:
        from synctalk.io.audio import write_wav

        self._tmp_out = Path(self._tmpdir.name) / "out.mp4"
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(self.fps), "-i", "-"]
        if self.audio is not None:
            wav = Path(self._tmpdir.name) / "audio.wav"
            write_wav(wav, self.audio, self.sample_rate)
            cmd += ["-i", str(wav), "-c:a", "aac", "-b:a", "96k", "-shortest"]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", str(self._tmp_out)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.proc is not None:
                self.proc.stdin.close()
                err = self.proc.stderr.read().decode(errors="replace").strip()
                if self.proc.wait() != 0 and exc_type is None:
                    raise InputError(f"ffmpeg could not write {self.path.name}: {err.splitlines()[-1] if err else '?'}")
                if exc_type is None:
                    from synctalk.io.atomic import atomic_path

                    with atomic_path(self.path, suffix=".mp4") as tmp:
                        shutil.copyfile(self._tmp_out, tmp)
        finally:
            self._tmpdir.cleanup()
        return False


def open_mp4(path: Path, fps: float, audio: np.ndarray | None, sample_rate: int, crf: int = 18,
             preset: str = "veryfast"):
    backend = mp4_backend()
    if backend == "pyav":
        from synctalk.io.video import VideoWriter

        return VideoWriter(path, fps=fps, crf=crf, preset=preset, audio=audio, sample_rate=sample_rate)
    if backend == "ffmpeg":
        return _FfmpegWriter(path, fps, audio, sample_rate, crf, preset)
    raise InputError("writing an MP4 needs PyAV (pip install av) or an ffmpeg program on PATH; "
                     "neither is here: install one, or render PNGs with --frames DIR")


class _Yuv420:
    """A queued yuv420p frame (kept apart from RGB arrays, whose shape could look alike)."""

    __slots__ = ("planes",)

    def __init__(self, planes: np.ndarray) -> None:
        self.planes = np.ascontiguousarray(planes, dtype=np.uint8)


class FrameSink:
    """Consumes RGB uint8 frames on a worker thread: MP4 (with audio) and/or PNGs."""

    def __init__(self, mp4: Path | None, frames_dir: Path | None, fps: float, audio: np.ndarray | None,
                 sample_rate: int = 16000) -> None:
        if mp4 is None and frames_dir is None:
            raise ValueError("FrameSink needs an mp4 path or a frames folder")
        self.mp4, self.frames_dir = mp4, frames_dir
        self._writer = open_mp4(mp4, fps, audio, sample_rate) if mp4 is not None else None
        if frames_dir is not None:
            frames_dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._count = 0
        self._thread = threading.Thread(target=self._work, name="synctalk-frame-sink", daemon=True)
        self._entered = False

    def __enter__(self) -> "FrameSink":
        if self._writer is not None:
            self._writer.__enter__()
        self._entered = True
        self._thread.start()
        return self

    @property
    def wants_yuv(self) -> bool:
        """True when frames may be handed over as yuv420p planes (``put_yuv``): an MP4 through PyAV
        and no PNGs (which need RGB)."""
        from synctalk.io.video import VideoWriter

        return isinstance(self._writer, VideoWriter) and self.frames_dir is None

    def put(self, frame: np.ndarray) -> None:
        """One RGB uint8 frame [H, W, 3]."""
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def put_yuv(self, planes: np.ndarray) -> None:
        """One yuv420p frame [H*3/2, W] uint8 (``rgb_to_yuv420``); only when ``wants_yuv``."""
        if not self.wants_yuv:
            raise RuntimeError("this sink takes RGB frames only")
        if self._error is not None:
            raise self._error
        self._queue.put(_Yuv420(planes))

    def _work(self) -> None:
        import cv2

        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is not None:
                continue  # drain: the renderer learns of the error at its next put / at exit
            try:
                if isinstance(frame, _Yuv420):  # queued only when wants_yuv: an MP4 writer and no PNGs
                    import av

                    frame = av.VideoFrame.from_ndarray(frame.planes, format="yuv420p")
                if self._writer is not None:
                    self._writer.write(frame)
                if self.frames_dir is not None:
                    ok, data = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                    if not ok:
                        raise OSError("PNG encoding failed")
                    (self.frames_dir / f"frame_{self._count:05d}.png").write_bytes(data.tobytes())
                self._count += 1
            except BaseException as e:  # surfaced to the caller on the render thread
                self._error = e

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            exc_type, exc, tb = type(self._error), self._error, self._error.__traceback__
        if self._writer is not None:
            self._writer.__exit__(exc_type, exc, tb)
        if self._error is not None and exc is self._error:
            raise self._error
        return False

    @property
    def frames_written(self) -> int:
        return self._count

