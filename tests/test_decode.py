"""The `decode` stage: timestamp resampling, crop, audio extraction and one-line input errors."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from media_factory import dominant_frequency, make_video, read_counter, sine
from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.io import video as V
from synctalk.io.audio import read_wav
from synctalk.io.video import iter_frames
from synctalk.prepare import decode
from synctalk.prepare.config import PrepareConfig
from synctalk.prepare.context import StageContext

REPO = Path(__file__).resolve().parents[1]
SMALL = 128  # working size for synthetic clips: exercises the same code as 512, faster


def _config(**decode_overrides) -> PrepareConfig:
    cfg = PrepareConfig()
    return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **decode_overrides))


def _run(tmp_path: Path, source: Path, cfg: PrepareConfig | None = None) -> tuple[dict, Path]:
    root = tmp_path / "subject"
    root.mkdir(exist_ok=True)
    facts = decode.run(StageContext(root=root, source=source, config=cfg or _config(size=SMALL)))
    return facts, root


def _counters(root: Path) -> list[int]:
    return [read_counter(f) for f in iter_frames(root / S.FRAMES)]


@pytest.mark.parametrize("src_fps,n_src", [(30, 90), (50, 150), (60, 180), (24, 72)])
def test_constant_frame_rates_resample_by_time(tmp_path: Path, src_fps: int, n_src: int):
    src = make_video(tmp_path / f"in{src_fps}.mp4", fps=src_fps, n_frames=n_src, width=SMALL, height=SMALL,
                     audio=sine(440.0, n_src / src_fps, 48000, 2))
    facts, root = _run(tmp_path, src)
    n = math.floor(n_src / src_fps * 25)   # 3 s -> 75 frames
    assert facts["n_frames"] == n == 75
    assert (facts["fps"], facts["width"], facts["height"]) == (25.0, SMALL, SMALL)
    assert facts["source"]["fps"] == src_fps and facts["source"]["n_frames"] == n_src
    assert facts["source"]["vfr"] is False and facts["crop"] is None
    # Output frame k shows the source frame displayed at k/25 s: the largest i with i/src_fps <= k/25.
    assert _counters(root) == [k * src_fps // 25 for k in range(n)]
    samples, rate = read_wav(root / S.AUDIO)
    assert rate == 16000 and samples.size == n * 640
    assert facts["audio"]["seconds"] == n / 25 and facts["audio"]["silent"] is False


def test_25fps_maps_one_to_one_and_opencv_agrees(tmp_path: Path):
    src = make_video(tmp_path / "in25.mp4", fps=25, n_frames=40, width=SMALL, height=SMALL,
                     audio=sine(440.0, 1.6, 48000, 2))
    facts, root = _run(tmp_path, src)
    assert facts["n_frames"] == 40
    assert _counters(root) == list(range(40))
    assert [read_counter(f) for f in V._iter_cv2(root / S.FRAMES, 0, None)] == list(range(40))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_phone_videos_stored_turned_come_out_upright(tmp_path: Path, rotation: int):
    """A phone stores the sensor's picture and a display matrix; players (and synctalk) turn it upright."""
    src = make_video(tmp_path / "phone.mp4", fps=25, n_frames=20, width=SMALL, height=SMALL,
                     audio=sine(440.0, 0.8, 48000, 1), display_rotation=rotation)
    import av

    with av.open(str(src)) as c:
        raw = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    # On disk the pictures are turned (the counter band is not on top); iter_frames turns them back.
    assert [read_counter(f) for f in raw] != list(range(20))
    assert [read_counter(f) for f in V.iter_frames(src)] == list(range(20))
    facts, root = _run(tmp_path, src)
    assert facts["source"]["rotation"] == rotation % 360
    assert _counters(root) == list(range(20))


def test_variable_frame_rate_holds_the_last_frame(tmp_path: Path):
    times = [0.0, 0.04, 0.05, 0.2, 0.21, 0.3, 0.5, 0.52, 0.6, 0.9, 0.93, 1.0, 1.1, 1.15]
    src = make_video(tmp_path / "vfr.mp4", frame_times=times, width=SMALL, height=SMALL,
                     audio=sine(440.0, 1.3, 48000, 2))
    facts, root = _run(tmp_path, src)
    assert facts["source"]["vfr"] is True and facts["source"]["n_frames"] == len(times)
    duration = facts["source"]["duration"]
    assert 1.15 < duration <= 1.25
    n = math.floor(duration * 25 + 1e-9)
    assert facts["n_frames"] == n
    expected = [max(i for i, t in enumerate(times) if t <= k / 25 + 1e-9) for k in range(n)]
    assert _counters(root) == expected


@pytest.mark.parametrize("codec,suffix", [("aac", ".mp4"), ("libmp3lame", ".mkv")])
def test_stereo_48k_audio_becomes_16k_mono_of_exact_length(tmp_path: Path, codec: str, suffix: str):
    src = make_video(tmp_path / f"talk{suffix}", fps=25, n_frames=50, width=SMALL, height=SMALL,
                     audio=sine(440.0, 2.0, 48000, 2), audio_codec=codec)
    facts, root = _run(tmp_path, src)
    samples, rate = read_wav(root / S.AUDIO)
    assert rate == 16000 and samples.size == 50 * 640
    a = facts["audio"]
    assert (a["sample_rate"], a["source_rate"], a["source_channels"]) == (16000, 48000, 2)
    assert a["source_codec"].startswith("aac" if codec == "aac" else "mp3")
    assert abs(dominant_frequency(samples[1600:-1600], 16000) - 440.0) < 2.0
    assert -12 < a["rms_dbfs"] < -7   # 0.5-amplitude sine is -9 dBFS


def test_silent_audio_is_flagged_not_fatal(tmp_path: Path):
    src = make_video(tmp_path / "quiet.mp4", fps=25, n_frames=25, width=SMALL, height=SMALL,
                     audio=np.zeros((2, 48000), np.float32))
    facts, root = _run(tmp_path, src)
    assert facts["audio"]["silent"] is True and facts["audio"]["rms_dbfs"] < -60
    samples, _ = read_wav(root / S.AUDIO)
    assert samples.size == 25 * 640 and np.abs(samples).max() < 1e-3


def _assert_one_line_input_error(tmp_path: Path, source: Path, pattern: str, cfg=None) -> None:
    with pytest.raises(InputError, match=pattern) as e:
        _run(tmp_path, source, cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "subject" / S.FRAMES).exists(), "a failed decode must not leave frames.mp4"


def test_no_audio_track_is_an_input_error(tmp_path: Path):
    src = make_video(tmp_path / "mute.mp4", n_frames=10, width=SMALL, height=SMALL)
    _assert_one_line_input_error(tmp_path, src, "no audio track: synctalk learns lip sync from the video's speech")


def test_unreadable_inputs_are_input_errors(tmp_path: Path):
    good = make_video(tmp_path / "good.mp4", n_frames=30, width=SMALL, height=SMALL,
                      audio=sine(440.0, 1.2, 48000, 2))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("this is a shopping list, not a video\n" * 20)
    audio_only = tmp_path / "speech.wav"
    from synctalk.io.audio import write_wav
    write_wav(audio_only, sine(440.0, 1.0, 16000)[0], 16000)
    for path, pattern in [(truncated, "not a readable video file"), (garbage, "not a readable video file"),
                          (text, "not a readable video file"), (audio_only, "has no video stream")]:
        _assert_one_line_input_error(tmp_path, path, pattern)


def test_video_shorter_than_one_output_frame_is_an_input_error(tmp_path: Path):
    src = make_video(tmp_path / "blink.mp4", fps=50, n_frames=1, width=SMALL, height=SMALL,
                     audio=sine(440.0, 0.5, 48000, 2))
    _assert_one_line_input_error(tmp_path, src, "too short")


def test_tiny_video_is_too_small(tmp_path: Path):
    src = make_video(tmp_path / "tiny.mp4", n_frames=10, width=96, height=96, audio=sine(440.0, 0.4, 48000, 2))
    _assert_one_line_input_error(tmp_path, src, "too small", _config(size=SMALL))


def test_large_video_without_a_face_is_an_input_error(tmp_path: Path):
    src = make_video(tmp_path / "noface.mp4", n_frames=10, width=320, height=240,
                     audio=sine(440.0, 0.4, 48000, 2))
    _assert_one_line_input_error(tmp_path, src, "no face found")


def face_on_canvas(anchor_video: Path, n: int, canvas_hw: tuple[int, int], box: tuple[int, int, int]):
    """frame(i): the anchor clip's frame i scaled to ``side`` px at (x0, y0) on a grey canvas."""
    import cv2

    x0, y0, side = box
    faces = [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in iter_frames(anchor_video, stop=n)]

    def frame(i: int) -> np.ndarray:
        canvas = np.full((*canvas_hw, 3), 40, np.uint8)
        canvas[y0:y0 + side, x0:x0 + side] = faces[i]
        return canvas

    return frame


@pytest.fixture(scope="module")
def anchor_on_canvas(anchor_video: Path, tmp_path_factory) -> tuple[Path, tuple[int, int, int]]:
    """2 s of the real anchor clip, scaled to 600 px, placed off-centre on a 1280x720 grey canvas."""
    x0, y0, side = 620, 60, 600
    frame = face_on_canvas(anchor_video, 50, (720, 1280), (x0, y0, side))
    path = tmp_path_factory.mktemp("canvas") / "canvas.mp4"
    make_video(path, fps=25, n_frames=50, width=1280, height=720, frame_fn=frame,
               audio=sine(300.0, 2.0, 44100, 2), crf=16)
    return path, (x0, y0, side)


def test_large_input_is_cropped_around_the_face_and_maps_back(tmp_path: Path, anchor_on_canvas):
    import cv2

    from synctalk.prepare.crop import FaceDetector

    src, (px, py, pside) = anchor_on_canvas
    facts, root = _run(tmp_path, src, _config())   # default 512 working size
    crop = facts["crop"]
    assert crop["source_width"] == 1280 and crop["source_height"] == 720
    x0, y0, side = crop["x0"], crop["y0"], crop["side"]
    assert 0 <= x0 and x0 + side <= 1280 and 0 <= y0 and y0 + side <= 720
    # The face (detected independently on the source frame) lies inside the crop.
    source0 = next(iter_frames(src))
    with FaceDetector() as det:
        face = det.detect(source0)
    assert face is not None
    assert x0 <= face.cx - face.width / 2 and face.cx + face.width / 2 <= x0 + side
    assert y0 <= face.cy - face.height / 2 and face.cy + face.height / 2 <= y0 + side
    # The framing matches the original 512x512 crop the canvas was made from (within 5 %).
    assert abs(side - pside) < 0.05 * pside and abs(x0 - px) < 0.05 * pside and abs(y0 - py) < 0.05 * pside
    # Mapping back: the working frame, scaled to `side` and pasted at (x0, y0), reproduces the source.
    out0 = next(iter_frames(root / S.FRAMES))
    assert out0.shape == (512, 512, 3) and facts["n_frames"] == 50
    back = cv2.resize(out0, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    mse = np.mean((back - source0[y0:y0 + side, x0:x0 + side]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_upright_phone_clip_stored_sideways_is_cropped_upright(tmp_path: Path, anchor_video: Path):
    """A portrait 720x1280 phone clip stored as 1280x720 with a -90 degree display matrix (an iPhone held
    upright): the face is found, the crop is in upright coordinates, and the working frames map back."""
    import cv2

    x0, y0, side = 60, 300, 600
    frame = face_on_canvas(anchor_video, 25, (1280, 720), (x0, y0, side))
    src = make_video(tmp_path / "phone.mp4", fps=25, n_frames=25, width=720, height=1280, frame_fn=frame,
                     audio=sine(300.0, 1.0, 44100, 2), crf=16, display_rotation=-90)
    facts, root = _run(tmp_path, src, _config())
    crop = facts["crop"]
    assert facts["source"]["rotation"] == 270 and (crop["source_width"], crop["source_height"]) == (720, 1280)
    assert abs(crop["side"] - side) < 0.05 * side and abs(crop["x0"] - x0) < 0.05 * side
    out0 = next(iter_frames(root / S.FRAMES))
    back = cv2.resize(out0, (crop["side"],) * 2, interpolation=cv2.INTER_CUBIC).astype(np.float64)
    source0 = frame(0)[crop["y0"]:crop["y0"] + crop["side"], crop["x0"]:crop["x0"] + crop["side"]]
    assert 10 * np.log10(255**2 / np.mean((back - source0) ** 2)) > 30


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNCTALK_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "synctalk", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_one_line_errors(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("definitely not a video\n" * 10)
    mute = make_video(tmp_path / "mute.mp4", n_frames=10, width=SMALL, height=SMALL)
    for src, message in [(text, "not a readable video file"), (mute, "no audio track")]:
        r = _cli("prepare", str(src), "-o", str(tmp_path / "out"), "--only", "decode", cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], r.stderr


@pytest.mark.slow
def test_anchor_clip_decodes_frame_exact(tmp_path: Path, anchor_video: Path):
    """The real 71-s, 512x512, 25 fps clip: 1:1 frames, high fidelity, small file, exact audio."""
    facts, root = _run(tmp_path, anchor_video, _config())
    assert facts["n_frames"] == 1779 and facts["crop"] is None and facts["source"]["vfr"] is False
    size = (root / S.FRAMES).stat().st_size
    assert size < 10 * 2**20
    se, count, n = 0.0, 0, 0
    for a, b in zip(iter_frames(root / S.FRAMES), iter_frames(anchor_video)):
        d = a.astype(np.int16) - b.astype(np.int16)
        se += float(np.sum(d.astype(np.int64) ** 2))
        count += d.size
        n += 1
    assert n == 1779
    assert 10 * np.log10(255**2 / (se / count)) > 40
    import cv2

    cap = cv2.VideoCapture(str(root / S.FRAMES))
    n_cv2 = 0
    while cap.grab():
        n_cv2 += 1
    cap.release()
    assert n_cv2 == 1779, "OpenCV (the GPU machine's reader) must see the same frames"
    samples, rate = read_wav(root / S.AUDIO)
    assert rate == 16000 and samples.size == 1779 * 640 and not facts["audio"]["silent"]
