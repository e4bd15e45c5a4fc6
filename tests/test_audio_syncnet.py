"""SyncNet LSE: RANDOM weights only (no real syncnet_v2.model exists here) - shapes, loading, the offset
search, MFCC front end and crop geometry. No test here says anything about real sync quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio.mfcc import mfcc, num_mfcc_frames
from synctalk.audio.syncnet_convert import main as convert_main
from synctalk.audio.syncnet_lse import (CROP, SyncNet, distance_curve, face_boxes, face_crops, load_syncnet,
                                        lse_score, mfcc_windows)
from synctalk.errors import InputError, MissingWeightsError


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), path)
    return path


def test_load_layouts_and_errors(tmp_path: Path, weights: Path):
    model = load_syncnet(weights)
    assert not model.training
    state = torch.load(weights, weights_only=True)
    assert "netcnnaud.18.weight" in state and tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    torch.save({"__S__." + k: v for k, v in state.items()}, tmp_path / "instance.model")
    load_syncnet(tmp_path / "instance.model")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "s.safetensors"))
    load_syncnet(tmp_path / "s.safetensors")
    with pytest.raises(MissingWeightsError, match="none ship"):
        load_syncnet(tmp_path / "absent.model")
    del state["netfclip.3.weight"]
    torch.save(state, tmp_path / "partial.model")
    with pytest.raises(InputError, match="missing 1"):
        load_syncnet(tmp_path / "partial.model")


def test_pickled_model_is_refused_then_converted_on_request(tmp_path: Path):
    torch.manual_seed(1)
    net = SyncNet()
    torch.save(net, tmp_path / "whole.model")            # a full pickled module, like some old releases
    with pytest.raises(InputError, match="syncnet_convert"):
        load_syncnet(tmp_path / "whole.model")
    out = tmp_path / "whole.safetensors"
    assert convert_main([str(tmp_path / "whole.model"), str(out)]) == 2 and not out.exists()  # no opt-in
    assert convert_main([str(tmp_path / "whole.model"), str(out), "--trust-pickle"]) == 0
    loaded = load_syncnet(out)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_distance_curve_finds_the_shift():
    torch.manual_seed(0)
    audio = torch.randn(40, 8)
    video = audio[3:33] + 0.01 * torch.randn(30, 8)      # video window i matches audio window i + 3
    d = distance_curve(video, audio[:30], vshift=5)
    assert d.shape == (30, 11)
    assert int(d.mean(0).argmin()) == 5 + 3
    # Off-the-end audio is a zero vector (the original's padding), not a clamp.
    np.testing.assert_allclose(d[0, 0], torch.linalg.norm(video[0]), rtol=1e-4)


def test_lse_score_plumbing(weights: Path):
    torch.set_num_threads(2)
    model = load_syncnet(weights)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (12, CROP, CROP, 3), dtype=np.uint8)
    wav = (rng.standard_normal(12 * 640) * 0.1).astype(np.float32)
    s = lse_score(model, crops, wav, vshift=3, batch_size=4)
    assert s.windows == 7 and len(s.mean_distance) == 7 and s.vshift == 3
    assert s.lse_d == pytest.approx(min(s.mean_distance)) and s.lse_c >= 0
    assert s.offset == 3 - int(np.argmin(s.mean_distance))
    with pytest.raises(InputError):
        lse_score(model, crops[:5], wav, vshift=3)


def test_mfcc_front_end():
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    cep = mfcc(wav)
    assert cep.shape == (num_mfcc_frames(16000), 13) == (99, 13)
    assert [num_mfcc_frames(n) for n in (300, 400, 401, 561)] == [1, 1, 2, 3]
    # c0 is the log energy of the pre-emphasised frame in int16 units, with |rfft|^2 / 512.
    x = wav.astype(np.float64) * 32768
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    frame = x[160 * 5:160 * 5 + 400]
    assert cep[5, 0] == pytest.approx(np.log(np.sum(np.abs(np.fft.rfft(frame, 512)) ** 2) / 512), rel=1e-9)
    win = mfcc_windows(wav, 10)
    assert win.shape == (10, 1, 13, 20)
    np.testing.assert_allclose(win[3, 0].numpy(), cep[12:32].T.astype(np.float32))


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")  # optional: measured bit-exact when installed
    rng = np.random.default_rng(3)
    pcm = (rng.standard_normal(16000 + 123) * 3000).astype(np.int16)
    np.testing.assert_allclose(mfcc(pcm / 32768.0), psf.mfcc(pcm, 16000), rtol=0, atol=1e-9)


def test_face_crop_geometry():
    lms = np.zeros((15, 4, 3), np.float32)
    lms[:, :, 0] = [[200, 300, 200, 300]]                 # box x 200..300, y 180..280 -> half size 50
    lms[:, :, 1] = [[180, 180, 280, 280]]
    boxes = face_boxes(lms)
    np.testing.assert_allclose(boxes[0], [50, 250, 230])
    frame = np.zeros((512, 512, 3), np.uint8)
    frame[228:233, 248:253] = (255, 0, 0)                # red dot at the box centre (RGB)
    crops = face_crops([frame] * 15, lms)
    assert crops.shape == (15, CROP, CROP, 3)
    # Centre -> (x 112, y 224 / 2.8 = 80) in the crop; BGR so red is channel 2.
    ys, xs = np.nonzero(crops[0, :, :, 2] > 60)
    assert abs(xs.mean() - 112) <= 1.5 and abs(ys.mean() - 80) <= 1.5
    edge = np.zeros((15, 4, 3), np.float32)
    edge[:, :, :2] = lms[:, :, :2] - 200                  # face at the image corner: grey padding appears
    assert (face_crops([frame] * 15, edge)[0] == 110).any()


def test_cli_refuses_missing_weights_before_scoring(shared_data: Path, tmp_path: Path, capsys):
    from synctalk.cli import main

    assert main(["sync-score", str(shared_data / "may_real3dportrait_5s.mp4"),
                 "--syncnet", str(tmp_path / "none.model")]) == 1
    err = capsys.readouterr()
    assert "syncnet" in (err.out + err.err).lower() and "best offset" not in err.out


@pytest.mark.slow
def test_cli_end_to_end_with_random_weights(shared_data: Path, weights: Path, tmp_path: Path, capsys):
    """Plumbing only (face mesh -> crops -> MFCC -> LSE); random weights say nothing about sync."""
    import json

    from synctalk.cli import main

    out = tmp_path / "score.json"
    assert main(["sync-score", str(shared_data / "may_real3dportrait_5s.mp4"), "--syncnet", str(weights),
                 "--json", str(out)]) == 0
    assert "LSE-D" in capsys.readouterr().out
    lse = json.loads(out.read_text())["syncnet"]
    assert lse["windows"] == 120 and len(lse["mean_distance"]) == 31 and lse["lse_c"] >= 0
