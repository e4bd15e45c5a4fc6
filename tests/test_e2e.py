"""`synctalk run`: the whole command on 3 s of real footage (tiny preset, CPU), its resume, and its rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from synctalk import e2e
from synctalk.cli import main
from synctalk.errors import InputError
from synctalk.io.audio import write_wav as write_pcm16

CLIP_FRAMES = 75          # 3 s: the shortest video whose test split (7 frames) the audio stage accepts
DRIVE_SECONDS = 1.2       # 30 rendered frames: rendering is ~0.4 s per frame on a busy CPU core
# Small enough to finish in about a minute on 2 shared cores; each stage still trains, exports and is
# evaluated, which is what this test is about (quality is measured by benchmarks/bench_e2e.py).
FAST = ["--preset", "tiny", "--set", "audio.steps=3", "--set", "head_steps=10", "--set", "lips_steps=2",
        "--set", "torso.steps=4", "--set", "torso.test_frames=1"]


def write_wav(path: Path, samples: np.ndarray) -> Path:
    write_pcm16(path, samples, 16000)
    return path


@pytest.fixture(scope="module")
def clip_and_audio(anchor_video: Path, shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The first 3 s of the anchor clip (with its sound) and 1.2 s of another speaker's audio."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.io.video import VideoWriter, iter_frames

    folder = tmp_path_factory.mktemp("e2e_inputs")
    clip = folder / "anchor3s.mp4"
    wav = load_driving_audio(anchor_video)[: CLIP_FRAMES * 640]
    with VideoWriter(clip, fps=25, crf=14, audio=wav, sample_rate=16000) as writer:
        for frame in iter_frames(anchor_video, stop=CLIP_FRAMES):
            writer.write(frame)
    drive = load_driving_audio(shared_data / "hdtf_radio34_sadtalker_8s.wav")[: int(DRIVE_SECONDS * 16000)]
    return clip, write_wav(folder / "drive.wav", drive)


@pytest.mark.slow
def test_run_command_end_to_end_then_resumes(clip_and_audio, tmp_path: Path, capsys):
    from synctalk.io.video import iter_frames

    clip, drive = clip_and_audio
    out = tmp_path / "renders" / "anchor_says.mp4"
    assert main(["run", str(clip), "--audio", str(drive), "-o", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"output: {out}" in printed and "test PSNR from training" in printed

    frames = list(iter_frames(out))
    assert len(frames) == round(DRIVE_SECONDS * 25)
    assert frames[0].std() > 10  # a picture, not a blank frame
    report = json.loads((tmp_path / "renders" / "anchor_says.report.json").read_text())
    assert list(report["stages"]) == ["prepare", "audio", "head+lips", "torso", "render"]
    assert report["subject"] == str(tmp_path / "renders" / "anchor3s.synctalk")
    assert report["stages"]["prepare"]["frames"] == CLIP_FRAMES
    for stage in ("audio", "head+lips", "torso"):
        assert report["stages"][stage]["skipped"] is False
    assert 8 < report["stages"]["head+lips"]["test_psnr"] < 60
    assert 8 < report["stages"]["torso"]["test_psnr"] < 60
    assert report["stages"]["render"]["mode"] == "torso+portrait"

    # Same subject again, another mode: every trained stage is reused untouched, only the render runs.
    work = Path(report["subject"]) / "workspace" / "nerf"
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("*_model.safetensors")}
    assert set(stamps) == {"head_model.safetensors", "lips_model.safetensors", "torso_model.safetensors"}
    again = tmp_path / "again.mp4"
    assert main(["run", str(clip), "--audio", str(drive), "-o", str(again), "--subject", report["subject"],
                 "--mode", "head", *FAST]) == 0
    second = json.loads((tmp_path / "again.report.json").read_text())
    for stage in ("audio", "head+lips", "torso"):
        assert second["stages"][stage]["skipped"] is True, stage
    assert second["stages"]["head+lips"]["test_psnr"] == report["stages"]["head+lips"]["test_psnr"]
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*_model.safetensors")} == stamps
    assert second["stages"]["render"]["mode"] == "head" and again.is_file()


def test_errors_are_one_line_and_come_before_any_work(clip_and_audio, tmp_path: Path, capsys):
    clip, drive = clip_and_audio
    cases = [
        (["run", str(tmp_path / "missing.mp4"), "--audio", str(drive), "-o", str(tmp_path / "o.mp4")],
         "input video not found"),
        (["run", str(clip), "--audio", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.mp4")],
         "audio file not found"),
        (["run", str(clip), "--audio", str(drive), "-o", str(tmp_path / "o.avi")], "must be an .mp4"),
        (["run", str(clip), "--audio", str(drive), "-o", str(tmp_path / "o.mp4"), "--set", "no_such=1"],
         "no_such"),
        (["run", str(clip), "--audio", str(drive), "-o", str(tmp_path / "o.mp4"), "--set", "audio.steps=x"],
         "steps"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("synctalk run: error:")
    assert not any(tmp_path.glob("*.synctalk")), "an error after the checks started the pipeline"


def test_presets_follow_the_device():
    opts = e2e.RunOptions()
    assert e2e.choose_presets(opts, has_cuda=True) == ("fast", "default", [])
    name, audio, warnings = e2e.choose_presets(opts, has_cuda=False)
    assert (name, audio) == ("tiny", "tiny") and "tiny" in warnings[0] and "CPU" in warnings[0]
    name, _, warnings = e2e.choose_presets(e2e.RunOptions(preset="fast"), has_cuda=False)
    assert name == "fast" and "many hours" in warnings[0]
    assert e2e.choose_presets(e2e.RunOptions(device="cpu"), has_cuda=True)[0] == "tiny"
    with pytest.raises(InputError, match="no CUDA GPU"):
        e2e.choose_presets(e2e.RunOptions(device="cuda"), has_cuda=False)


def test_overrides_go_to_their_stage():
    groups = e2e.split_overrides(["head_steps=5", "torso.steps=3", "audio.steps=2", "prepare.pose.max_tracks=9"])
    assert groups == {"head": ["head_steps=5"], "torso": ["steps=3"], "audio": ["steps=2"],
                      "prepare": ["pose.max_tracks=9"]}
    cfg, torso = e2e.train_configs("tiny", ["head_steps=5", "torso.steps=3"], "auto")
    assert (cfg.head_steps, torso.steps, cfg.max_frames) == (5, 3, None)  # a user's run sees every frame
    assert e2e.train_configs("tiny", ["max_frames=20"], "auto")[0].max_frames == 20
    assert e2e.audio_config("tiny", ["audio.steps=2"]).steps == 2
    assert e2e.prepare_config("default", ["prepare.pose.max_tracks=9"]).pose.max_tracks == 9


def test_stage_outputs_are_current_only_with_the_same_settings_and_newer_than_their_input(tmp_path: Path):
    model, upstream = tmp_path / "lips_model.json", tmp_path / "features.npy"
    assert not e2e.output_is_current(model, {"a": 1}, upstream)  # missing
    model.write_text(json.dumps({"config": {"a": 1.5, "b": None}}))
    upstream.write_bytes(b"x")
    os.utime(upstream, (1_000, 1_000))
    assert e2e.output_is_current(model, {"a": 1.5, "b": None}, upstream)
    assert not e2e.output_is_current(model, {"a": 2.0, "b": None}, upstream)   # other settings
    os.utime(upstream, (model.stat().st_mtime + 10,) * 2)
    assert not e2e.output_is_current(model, {"a": 1.5, "b": None}, upstream)   # input retrained since
    model.write_text("{not json")
    assert not e2e.output_is_current(model, {"a": 1.5}, None)


def test_short_videos_narrow_the_held_out_sync_check():
    from synctalk.audio.sync_model import preset

    cfg = preset("tiny")
    assert e2e.fit_sync_check_to_split(cfg, 400) is cfg
    assert e2e.fit_sync_check_to_split(cfg, 7).eval_max_offset == 1
    with pytest.raises(InputError, match="too short"):
        e2e.fit_sync_check_to_split(cfg, 5)


def test_failures_a_user_can_fix_become_one_line():
    from synctalk.errors import StageError

    err = e2e._as_stage_error("torso", OSError(28, "No space left on device", "/data/s/workspace"))
    assert isinstance(err, StageError) and "torso: No space left on device (/data/s/workspace)" in str(err)
    bug = ValueError("shape mismatch")
    assert e2e._as_stage_error("render", bug) is bug  # a bug keeps its traceback
