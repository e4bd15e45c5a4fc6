"""synctalk.io.audio (decode_audio, write_wav, read_wav) and synctalk.io.video (VideoWriter, iter_frames)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from media_factory import counter_frame, dominant_frequency, make_audio, make_video, read_counter, sine
from synctalk.errors import InputError
from synctalk.io import video as V
from synctalk.io.audio import decode_audio, fit_length, loudness, read_wav, write_wav
from synctalk.io.video import VideoWriter, iter_frames


def test_wav_round_trip_is_pcm16_exact(tmp_path: Path):
    x = np.linspace(-1, 1, 16001, dtype=np.float32) * 0.9
    write_wav(tmp_path / "a.wav", x, 16000)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16001)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) < 1.5 / 32767
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"], "no temporary file left behind"


def test_read_wav_24bit_stereo_is_downmixed(tmp_path: Path):
    left = np.array([0.5, -0.25, 0.0, 0.75])
    right = np.array([0.5, 0.25, -0.5, 0.25])
    ints = np.round(np.stack([left, right], 1).reshape(-1) * 2**23).astype(np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    with wave.open(str(tmp_path / "s24.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(22050)
        w.writeframes(raw)
    y, rate = read_wav(tmp_path / "s24.wav")
    assert rate == 22050
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_read_wav_rejects_non_wav(tmp_path: Path):
    (tmp_path / "x.wav").write_text("not a wav")
    with pytest.raises(InputError, match="not a PCM WAV"):
        read_wav(tmp_path / "x.wav")


@pytest.mark.parametrize("name,codec,rate,channels", [
    ("a.mp3", "libmp3lame", 44100, 2),
    ("a.flac", "flac", 44100, 1),
    ("a.ogg", "libopus", 48000, 2),
    ("a.wav", "pcm_s16le", 48000, 2),
    ("a.m4a", "aac", 48000, 2),
])
def test_decode_audio_formats_to_16k_mono(tmp_path: Path, name, codec, rate, channels):
    make_audio(tmp_path / name, sine(440.0, 2.0, rate, channels, amplitude=0.5), rate, codec)
    y, info = decode_audio(tmp_path / name)
    assert y.dtype == np.float32 and y.ndim == 1
    assert info["sample_rate"] == 16000 and info["source_rate"] == rate and info["source_channels"] == channels
    # Encoders add up to ~50 ms of priming/padding; the duration must still be ~2 s.
    assert abs(info["seconds"] - 2.0) < 0.06, info
    assert abs(dominant_frequency(y, 16000) - 440.0) < 2.0
    # A mean downmix keeps the level of identical channels (amplitude 0.5 -> RMS -9 dBFS).
    rms_dbfs, peak = loudness(y[1600:-1600])
    assert abs(rms_dbfs - 20 * np.log10(0.5 / np.sqrt(2))) < 0.5 and peak < 0.55


def test_decode_audio_errors_are_one_line_input_errors(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello, this is not media\n" * 50)
    make_video(tmp_path / "mute.mp4", n_frames=5)
    cases = [(tmp_path / "notes.txt", r"not a readable audio file \(it is text\)"),
             (tmp_path / "mute.mp4", "no audio track"), (tmp_path / "missing.wav", "not found")]
    for path, pattern in cases:
        with pytest.raises(InputError, match=pattern) as e:
            decode_audio(path)
        assert "\n" not in str(e.value)


def test_fit_length_shifts_pads_and_trims():
    x = np.arange(1, 6, dtype=np.float32)
    assert fit_length(x, 7).tolist() == [1, 2, 3, 4, 5, 0, 0]
    assert fit_length(x, 3).tolist() == [1, 2, 3]
    assert fit_length(x, 4, offset=2).tolist() == [0, 0, 1, 2]
    assert fit_length(x, 4, offset=-2).tolist() == [3, 4, 5, 0]


def test_video_writer_frame_exact_with_pyav_and_opencv(tmp_path: Path, monkeypatch):
    out = tmp_path / "clip.mp4"
    audio = sine(300.0, 3.0, 16000)[0]  # longer than the video: trimmed on close
    with VideoWriter(out, fps=25, crf=18, audio=audio, sample_rate=16000) as w:
        for i in range(37):
            w.write(counter_frame(i, 96, 64))
    assert w.frames_written == 37
    via_av = [read_counter(f) for f in iter_frames(out)]
    assert via_av == list(range(37))
    assert [read_counter(f) for f in iter_frames(out, start=30, stop=33)] == [30, 31, 32]
    via_cv2 = [read_counter(f) for f in V._iter_cv2(out, 0, None)]
    assert via_cv2 == via_av
    y, info = decode_audio(out)
    assert info["codec"] == "aac" and abs(info["seconds"] - 37 / 25) < 0.07
    assert abs(dominant_frequency(y, 16000) - 300.0) < 3.0


def test_video_writer_is_atomic_on_error(tmp_path: Path):
    out = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out) as w:
            w.write(counter_frame(0, 64, 64))
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="even"):
        with VideoWriter(out) as w:
            w.write(np.zeros((63, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
