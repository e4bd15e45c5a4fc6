"""Synthesise small test videos and audio files with PyAV (no real footage needed).

Video frames carry a *frame counter*: the source frame index written in binary as 8 black/white
blocks across the top band, robust to H.264 compression, so a test can read back which source frame
an output frame shows (``read_counter``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

COUNTER_BITS = 8


def counter_frame(index: int, width: int, height: int) -> np.ndarray:
    """Grey RGB frame with ``index`` (< 256) as 8 white (1) / black (0) blocks in the top band."""
    rgb = np.full((height, width, 3), 96, np.uint8)
    band = max(16, height // 4)
    block = width // COUNTER_BITS
    for bit in range(COUNTER_BITS):
        value = 255 if (index >> bit) & 1 else 0
        rgb[:band, bit * block:(bit + 1) * block] = value
    return rgb


def read_counter(rgb: np.ndarray) -> int:
    """Inverse of ``counter_frame`` for a frame of any size (reads block centres)."""
    height, width = rgb.shape[:2]
    band = max(16, height // 4) if height >= 64 else height // 4
    block = width / COUNTER_BITS
    value = 0
    for bit in range(COUNTER_BITS):
        x0, x1 = int(bit * block + block / 4), int((bit + 1) * block - block / 4)
        patch = rgb[band // 4: band * 3 // 4, x0:x1].astype(np.float32)
        if patch.mean() > 128:
            value |= 1 << bit
    return value


def sine(freq: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """[channels, n] float32 sine wave (identical in every channel)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def make_video(path: Path, *, fps: float = 25.0, n_frames: int = 50, width: int = 128, height: int = 128,
               frame_times: Sequence[float] | None = None,
               frame_fn: Callable[[int], np.ndarray] | None = None,
               audio: np.ndarray | None = None, audio_rate: int = 48000, audio_codec: str = "aac",
               crf: int = 18, display_rotation: int = 0) -> Path:
    """Write an H.264 video of ``n_frames`` counter frames (or ``frame_fn(i)`` frames).

    ``frame_times`` (seconds, increasing) makes it variable-frame-rate: timestamps in a 1/1000 time
    base. ``audio`` is [channels, n] float32 at ``audio_rate``, encoded with ``audio_codec``
    ("aac", "libmp3lame", "pcm_s16le", ...); the container follows ``path``'s suffix (.mp4, .mkv).
    ``display_rotation`` (counter-clockwise degrees, a multiple of 90) stores every picture turned the
    other way plus a display matrix, as a phone does: a player shows the frames as ``frame_fn`` made them."""
    import av

    if frame_times is not None:
        n_frames = len(frame_times)
    upright = frame_fn or (lambda i: counter_frame(i, width, height))

    def make(i: int) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(upright(i), -display_rotation // 90))
    with av.open(str(path), "w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stored_w, stored_h = (height, width) if display_rotation % 180 else (width, height)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        time_base = Fraction(1, 1000) if frame_times is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if frame_times is not None:
            stream.time_base = time_base
        astream = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            astream = container.add_stream(audio_codec, rate=audio_rate, layout=layout)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(make(i), format="rgb24")
            frame.pts = int(round(frame_times[i] * 1000)) if frame_times is not None else i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, audio, audio_rate)
    return path


def _encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    """Feed planar float frames; PyAV converts them to the codec's sample format and frame size."""
    import av

    layout = "mono" if samples.shape[0] == 1 else "stereo"
    step = 4096
    for start in range(0, samples.shape[1], step):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + step], np.float32),
                                        format="fltp", layout=layout)
        af.sample_rate = rate
        af.pts = start
        af.time_base = Fraction(1, rate)
        for packet in stream.encode(af):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def make_audio(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """Audio-only file ([channels, n] float32) with ``codec``; container from the suffix (.mp3, .flac...)."""
    import av

    with av.open(str(path), "w") as container:
        layout = "mono" if samples.shape[0] == 1 else "stereo"
        stream = container.add_stream(codec, rate=rate, layout=layout)
        _encode_audio(container, stream, samples, rate)
    return path


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the strongest FFT bin, Hann-windowed."""
    x = np.asarray(samples, np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def write_clip(path: Path, frames) -> None:
    """Encode RGB frames (any iterable) as a near-lossless 25-fps H.264 clip, as a subject's frames.mp4."""
    import av

    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for rgb in (first, *frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
