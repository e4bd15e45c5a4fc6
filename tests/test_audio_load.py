"""load_driving_audio: every common container decodes to 16 kHz mono float32; bad inputs are one-line errors."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from synctalk.audio.load import load_driving_audio
from synctalk.errors import InputError


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def _write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    pcm = (np.clip(x.T, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _encode(path: Path, codec: str, x: np.ndarray, rate: int, fmt: str) -> Path:
    import av

    layout = "stereo" if x.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("name,codec,fmt,rate", [
    ("a.mp3", "libmp3lame", "fltp", 44100), ("a.flac", "flac", "s16", 44100), ("a.m4a", "aac", "fltp", 44100),
    ("a.ogg", "libopus", "flt", 48000), ("a.wav", None, None, 22050)])
def test_formats_decode_to_16k_mono(tmp_path: Path, name: str, codec: str | None, fmt: str | None, rate: int):
    x = _tone(1.5, rate, channels=2)
    path = tmp_path / name
    if codec is None:
        _write_wav(path, x, rate)
    else:
        _encode(path, codec, x, rate, fmt)
    y = load_driving_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    # Lossy codecs add priming/padding of a few tens of ms; the duration must still be 1.5 s +- 0.1 s.
    assert abs(y.size / 16000 - 1.5) < 0.1
    # Energy must survive (decode scaling right, not silence): tone RMS ~0.3*0.63/sqrt(2).
    assert 0.08 < float(np.sqrt(np.mean(y ** 2))) < 0.25


def test_video_audio_track(shared_data: Path):
    y = load_driving_audio(shared_data / "may_real3dportrait_5s.mp4")
    assert abs(y.size / 16000 - 5.0) < 0.1
    assert np.abs(y).max() > 0.01


def test_mono_16k_wav_is_bit_exact(tmp_path: Path):
    x = _tone(0.5, 16000)
    y = load_driving_audio(_write_wav(tmp_path / "m.wav", x, 16000))
    expected = (np.clip(x[0], -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768
    assert y.size == x.shape[1]
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_bad_inputs_are_one_line_input_errors(tmp_path: Path, shared_data: Path):
    cases = {}
    cases["missing"] = tmp_path / "nope.wav"
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.wav"
    (tmp_path / "junk.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    cases["corrupt"] = tmp_path / "junk.mp3"
    (tmp_path / "notes.txt").write_text("hello, not audio\n" * 50)
    cases["text"] = tmp_path / "notes.txt"
    cases["short"] = _write_wav(tmp_path / "short.wav", _tone(0.1, 16000), 16000)
    cases["silent"] = _write_wav(tmp_path / "silent.wav", np.zeros((1, 16000), np.float32), 16000)
    good = _write_wav(tmp_path / "good.wav", _tone(1.0, 16000), 16000)
    cases["truncated"] = tmp_path / "trunc.wav"
    cases["truncated"].write_bytes(good.read_bytes()[:30])
    for name, path in cases.items():
        with pytest.raises(InputError) as info:
            load_driving_audio(path)
        msg = str(info.value)
        assert "\n" not in msg and path.name in msg, (name, msg)


def test_video_without_audio_track(tmp_path: Path):
    import av

    path = tmp_path / "mute.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    with pytest.raises(InputError, match="no audio track"):
        load_driving_audio(path)


def test_silent_allowed_with_warning(tmp_path: Path, caplog):
    path = _write_wav(tmp_path / "silent.wav", np.zeros((1, 8000), np.float32), 16000)
    y = load_driving_audio(path, allow_silent=True)
    assert y.size == 8000 and not np.any(y)
    assert any("silent" in r.getMessage() for r in caplog.records)
