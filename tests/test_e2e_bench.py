"""benchmarks/bench_e2e.py: the returned archives respect the device limits, the table is generated."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_e2e  # noqa: E402
import bench_e2e_score  # noqa: E402


def noisy_frames(n: int, size: int = 64, noise: int = 30, seed: int = 0) -> list[np.ndarray]:
    """Frame i: brightness 18 i plus noise (noise keeps the JPEGs from being tiny)."""
    rng = np.random.default_rng(seed)
    return [np.clip(18 * i + rng.integers(0, noise, (size, size, 3)), 0, 255).astype(np.uint8) for i in range(n)]


def test_frames_are_packed_under_the_size_limit_and_unpack_in_order(tmp_path: Path, monkeypatch):
    staging, out = tmp_path / "jpeg", tmp_path / "out"
    out.mkdir()
    frames = noisy_frames(12)
    bench_e2e.to_jpeg(frames[:7], staging / "test_head")
    bench_e2e.to_jpeg(frames[7:], staging / "drive_clip")
    one = (staging / "test_head" / "frame_00000.jpg").stat().st_size
    monkeypatch.setattr(bench_e2e, "VOLUME_BYTES", 4 * (one + 1024))
    names = bench_e2e.pack_volumes(staging, out)
    assert len(names) >= 3
    for name in names:
        assert (out / name).stat().st_size <= bench_e2e.VOLUME_BYTES + 10240  # + the tar end blocks
    bench_e2e_score.unpack(out, tmp_path / "back")
    back = bench_e2e_score.read_jpegs(tmp_path / "back" / "test_head")
    assert len(back) == 7 and len(bench_e2e_score.read_jpegs(tmp_path / "back" / "drive_clip")) == 5
    assert [round(f.mean() / 18) for f in back] == [round(f.mean() / 18) for f in frames[:7]]  # same order


def test_too_many_frames_are_reencoded_smaller_and_a_hostile_archive_is_refused(tmp_path: Path, monkeypatch):
    staging, out = tmp_path / "jpeg", tmp_path / "out"
    out.mkdir()
    bench_e2e.to_jpeg(noisy_frames(6, size=128, noise=120), staging / "test_head")
    before = sum(p.stat().st_size for p in staging.rglob("*.jpg"))
    monkeypatch.setattr(bench_e2e, "MAX_VOLUMES", 1)
    monkeypatch.setattr(bench_e2e, "VOLUME_BYTES", int(before * 0.8))
    assert bench_e2e.pack_volumes(staging, out) == ["frames_0.tar"]
    assert sum(p.stat().st_size for p in staging.rglob("*.jpg")) < before * 0.8

    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "frames_0.tar", "w") as tar:
        tar.add(next(staging.rglob("*.jpg")), arcname="../escape.jpg")
    with pytest.raises(Exception, match="unexpected entry"):
        bench_e2e_score.unpack(evil, tmp_path / "dest")


def test_the_results_table_is_generated_from_the_measurements():
    sync = {"best_offset": -1, "peak_correlation": 0.31, "correlation_margin": 0.2, "silent_frames_closed": 0.95,
            "silent_frames": 40, "speech_fraction": 0.7, "frames": 200}
    report = {
        "gpu": {"machine": "NVIDIA H100", "torch": "2.11", "date": "2026-11-24", "preset": "fast", "overrides": [],
                "test_ids": [1617, 1779], "elapsed_seconds": 512.0,
                "stages": {"audio": {"seconds": 100.0, "peak_gib": 2.4},
                           "head+lips": {"seconds": 180.0, "peak_gib": 9.5, "test_psnr": 30.1,
                                         "train_seconds": {"head": 99.0, "lips": 30.0}}}},
        "modes": {"head": {"psnr": 33.5, "ssim": 0.95, "lmd": 2.5, "render_faces_found": 10, "lmd_frames": 10,
                           "perceptual_hedvgg": 0.05, "frames": 162, "render_seconds": 1.35,
                           "av_sync": {**sync, "mouth_motion": {"r": -0.2, "std_ratio": 0.43, "frames": 162}}},
                  "portrait": {"psnr": 35.0, "ssim": 0.97, "lmd": 2.6, "render_faces_found": 10, "lmd_frames": 10,
                               "perceptual_hedvgg": 0.03, "frames": 162, "render_seconds": 1.5, "av_sync": {"unavailable": "too short"},
                               "unavailable": {"lpips_alex": "no --lpips-weights given"}}},
        "ground_truth_av_sync": sync,
        "drive": {"obama": {"frames": 610, "audio_seconds": 24.4, "fps": 90.0, "render_seconds": 5.0, "av_sync": {**sync, "best_offset": 3},
                            "silence": {"mode": "closed", "silent_frames": 40, "frames": 610,
                                        "rest": {"frame": 7, "candidates": 12, "source": "silent+closed"}}},
                  "demo": {"skipped": "past the 540-s deadline"}},
    }
    report["audio_carries"] = [{"input": "mel, first 64 principal components", "r_train": 0.704, "r_test": 0.541,
                                "std_ratio_test": 0.6}]
    report["targets"] = bench_e2e_score.targets(report)
    table = bench_e2e_score.render_markdown(report)
    assert "| mel, first 64 principal components | 0.704 | 0.541 | 0.60 |" in table
    assert ("| w/o portrait: head over the GT torso | 33.50 | 0.9500 | 2.50 | 10 of 10 | 0.0500 | -1 | 0.31 | 95 % of 40 "
            "| -0.20 (0.43) | 120.0 |") in table
    assert "| 0.0300 | n/a | n/a | n/a | n/a | 108.0 |" in table                  # portrait: no sync, no motion
    assert "| 95 % of 40 | 1 (1) | - |" in table                                # the ground truth's own row
    assert "av_sync n/a for test portrait: too short" in table
    assert "lpips_alex n/a (portrait): no --lpips-weights given" in table
    assert "| obama | 24.4 | 610 | 122.0 | 90.0 | closed: 40 frames, rest frame 7 | +3 |" in table and "| demo | skipped: past the 540-s deadline" in table
    assert "| head+lips (train steps head 99 s, lips 30 s) | 180.0 | 9.50 | 30.10 |" in table
    assert "Peak GPU memory over the whole run: 9.50 GiB." in table
    assert "- met: PSNR head over GT torso >= 33 dB" in table
    assert "- NOT met: PSNR portrait >= 36 dB" in table
    assert "- NOT met: obama: offset within +-2" in table       # offset 3 frames
    assert "- not measured: demo" in table
    assert "- met: GPU phase <= 600 s" in table


def test_the_evaluate_functions_the_benchmark_calls_keep_their_signatures():
    """bench_e2e renders and scores through synctalk/evaluate/run.py; a renamed argument there would only
    show on the GPU machine, in the one run of record, so it is caught here."""
    import inspect

    from synctalk.evaluate import run

    expected = {"render_test_mode": ["subject_root", "workspace", "mode", "ids", "options"],
                "ground_truth": ["sub", "ids", "size"], "image_metrics": ["pred", "gt", "options"],
                "lmd_metric": ["pred", "gt"], "sync_metrics": ["video", "syncnet_weights", "device"],
                "write_video": ["path", "frames", "audio"]}
    for name, params in expected.items():
        signature = inspect.signature(getattr(run, name)).parameters
        # The benchmark passes these positionally; anything added after them must be optional.
        assert list(signature)[:len(params)] == params, name
        extra = list(signature.values())[len(params):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), name
    assert {"device"} <= set(run.EvaluateOptions.__dataclass_fields__)


@pytest.mark.slow
def test_the_real_anchor_audio_predicts_its_test_mouth_and_noise_features_do_not(prepared_anchor: Path, tmp_path):
    """The score phase's reference for mouth motion (bench_audio_lip_baseline via audio_carries): on the
    real anchor a linear model of the mel windows predicts the held-out frames' lip height (r ~ 0.5),
    while features with no audio in them fit the train frames and predict nothing."""
    from synctalk import subject as S

    n = S.Subject(prepared_anchor).n_frames
    noise = tmp_path / "features_f16.npy"
    np.save(noise, np.random.default_rng(0).standard_normal((n, 512)).astype(np.float16))
    rows = {row["input"]: row for row in bench_e2e_score.audio_carries(prepared_anchor, noise)}
    mel, fake = rows["mel, first 64 principal components"], rows["AVE features, first 64 principal components"]
    assert mel["r_test"] > 0.4 and mel["r_train"] > mel["r_test"]
    assert abs(fake["r_test"]) < 0.2 and fake["r_train"] > 0.1   # ~sqrt(64 / 1617): fitted noise
    assert "AVE features, first 64 principal components" not in {
        row["input"] for row in bench_e2e_score.audio_carries(prepared_anchor, tmp_path / "absent.npy")}


@pytest.mark.slow
def test_mouth_curves_draw_one_panel_per_video(shared_data: Path, tmp_path):
    from synctalk.audio.mouth import face_mesh_landmarks

    video = shared_data / "may_real3dportrait_5s.mp4"
    lms, _, _ = face_mesh_landmarks(video)
    path = tmp_path / "mouth_motion.png"
    bench_e2e_score.mouth_curves({"real against itself": (video, lms), "again": (video, lms)}, path)
    import cv2

    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 400 and img.shape[1] == 1000     # two stacked 10-inch panels
    bench_e2e_score.mouth_curves({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
