"""Subject-trained sync model: mechanics on synthetic data (learning quality is benchmarked, see
benchmarks/bench_audio.py), artefact files, train-split isolation, and the augmentation invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio.augment import augment_windows, voice_variant, warp_mel_axis
from synctalk.audio.ave import audio_features, load_original_ave
from synctalk.audio.features import AVE_META, FEATURES, build_from_arrays, load_sync_model
from synctalk.audio.mel import melspectrogram
from synctalk.audio.sync_model import HALF, preset, sync_accuracy, train_sync_model, voiced_windows
from synctalk.audio.windows import WINDOW_MELS, frame_window_starts
from synctalk.errors import InputError

N_FRAMES, N_TRAIN = 170, 145


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    env = np.clip(np.convolve(rng.random(N_FRAMES), np.ones(3) / 3, "same"), 0, 1)
    env[(np.arange(N_FRAMES) // 20) % 3 == 2] = 0.01   # pauses: every third 20-frame block
    env = np.repeat(env, 640)
    wav = (rng.standard_normal(N_FRAMES * 640) * 0.2 * env).astype(np.float32)
    crops = rng.integers(0, 256, (N_FRAMES, 48, 96), dtype=np.uint8)
    return wav, crops


def _cfg(**kw):
    base = dict(steps=3, batch_size=4, hard_negatives=2, voice_variants=1, train_seconds=None, device="cpu",
                max_shift=6, eval_max_offset=6)
    base.update(kw)
    return preset("tiny", **base)


def test_artefacts_written_and_reloadable(tmp_path: Path):
    torch.set_num_threads(1)
    wav, crops = _synthetic()
    facts = build_from_arrays(tmp_path, wav, crops, N_TRAIN, _cfg())
    assert facts["audio_feature_frames"] == N_FRAMES
    assert 0.0 <= facts["ave_test_sync_within_1"] <= 1.0
    feats = np.load(tmp_path / FEATURES, allow_pickle=False)
    assert feats.shape == (N_FRAMES, 512) and feats.dtype == np.float32
    # ave.safetensors is in the original key layout, so the original loader reads it.
    ave = load_original_ave(tmp_path / "audio" / "ave.safetensors")
    np.testing.assert_allclose(audio_features(ave, wav, N_FRAMES), feats, atol=1e-5)
    model = load_sync_model(tmp_path)
    acc = sync_accuracy(model, wav, crops, range(N_TRAIN - 60, N_FRAMES), max_offset=6)
    assert acc["windows_all"] == (N_FRAMES - N_TRAIN + 60) - 2 * (2 + 6) and acc["max_offset"] == 6
    first = N_TRAIN - 60 + 2 + 6
    voiced = voiced_windows(wav, N_FRAMES)[first:first + acc["windows_all"]]
    assert acc["windows"] == int(voiced.sum()) and 0 < acc["windows"] < acc["windows_all"]
    everything = sync_accuracy(model, wav, crops, range(N_TRAIN - 60, N_FRAMES), max_offset=6,
                               voiced_margin_db=None)
    assert everything["windows"] == acc["windows_all"]
    assert everything["within_tolerance"] == pytest.approx(acc["within_tolerance_all"])
    meta = (tmp_path / AVE_META).read_text()
    assert '"test_sync"' in meta and '"loss_last"' in meta
    assert not list(tmp_path.rglob(".*.tmp*"))  # atomic writes left no temporaries


def test_training_never_reads_test_frames():
    torch.set_num_threads(1)
    wav, crops = _synthetic()
    m1, s1 = train_sync_model(wav, crops, N_TRAIN, _cfg())
    wav2, crops2 = wav.copy(), crops.copy()
    crops2[N_TRAIN:] = 255 - crops2[N_TRAIN:]
    wav2[N_TRAIN * 640 + 3200:] = 0.0   # beyond the last train window's audio
    m2, s2 = train_sync_model(wav2, crops2, N_TRAIN, _cfg())
    assert s1["loss_last"] == s2["loss_last"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert np.isfinite(s1["loss_first"]) and s1["loss_first"] > 0


def test_too_short_training_split():
    wav, crops = _synthetic()
    with pytest.raises(InputError):
        train_sync_model(wav, crops, 20, _cfg(max_shift=15))


def test_voice_variant_keeps_length_and_timing():
    rng = np.random.default_rng(1)
    env = np.repeat((rng.random(50) > 0.5).astype(np.float32), 640)
    wav = rng.standard_normal(env.size).astype(np.float32) * 0.3 * env
    out = voice_variant(wav, np.random.default_rng(2))
    assert out.shape == wav.shape and out.dtype == np.float32 and np.abs(out).max() <= 0.9 + 1e-6
    a = np.sqrt((wav.reshape(50, 640) ** 2).mean(1))
    b = np.sqrt((out.reshape(50, 640) ** 2).mean(1))
    lags = [np.corrcoef(a[max(0, k):50 + min(0, k)], b[max(0, -k):50 - max(0, k)])[0, 1] for k in range(-3, 4)]
    assert int(np.argmax(lags)) == 3  # the envelope is not shifted in time


def test_mel_warp():
    w = torch.randn(3, 1, 80, 16)
    torch.testing.assert_close(warp_mel_axis(w, torch.ones(3)), w)
    # A factor of 2 moves content at mel bin 20 up to bin 40.
    spike = torch.zeros(1, 1, 80, 16)
    spike[0, 0, 20] = 1.0
    assert int(warp_mel_axis(spike, torch.tensor([2.0]))[0, 0, :, 0].argmax()) == 40
    g = torch.Generator().manual_seed(0)
    out = augment_windows(torch.zeros(8, 1, 80, 16), g)
    assert out.shape == (8, 1, 80, 16) and out.abs().max() <= 4.0


def test_voiced_windows_mark_speech_not_pauses():
    rng = np.random.default_rng(3)
    loud = np.zeros(60, bool)
    loud[10:25] = loud[40:50] = True
    wav = rng.standard_normal(60 * 640).astype(np.float32) * np.repeat(np.where(loud, 0.3, 0.001), 640)
    voiced = voiced_windows(wav, 60)
    # A 5-frame window counts as voiced once enough of it overlaps speech: the edges may go either way.
    assert voiced[12:23].all() and voiced[42:48].all()
    assert not voiced[:7].any() and not voiced[28:37].any() and not voiced[53:].any()


def test_training_refuses_a_split_without_speech():
    wav, crops = _synthetic()
    with pytest.raises(InputError, match="speech"):
        train_sync_model(wav * 1e-4, crops, N_TRAIN, _cfg())


def test_mel_window_and_crop_stack_share_a_centre():
    """The audio window of frame i and the crop stack i-2..i+2 are centred on the same instant (frame i's
    centre, 40 i + 20 ms) to within half a frame: otherwise the 'true' offset would not be 0."""
    n = 40
    mel_per_frame = 80 / 25
    for i in (5, 17, 30):
        wav = np.zeros(n * 640, np.float32)
        centre = 640 * i + 320
        wav[centre - 40:centre + 40] = np.hanning(80).astype(np.float32)   # a 5-ms click at frame i's centre
        mel = melspectrogram(wav).numpy()
        click_mel = int(np.argmax(mel.max(axis=0)))
        start = int(frame_window_starts(n, mel.shape[1])[i])
        window_centre = start + (WINDOW_MELS - 1) / 2
        assert abs(click_mel - window_centre) <= mel_per_frame / 2 + 0.5, (i, click_mel, window_centre)
    assert HALF == 2   # the crop stack is frames i-2..i+2, centred on frame i by construction


def test_voiced_windows_without_pauses_count_speech():
    rng = np.random.default_rng(4)
    level = np.repeat(rng.uniform(0.1, 0.3, 50), 640)
    assert voiced_windows((rng.standard_normal(50 * 640) * level).astype(np.float32), 50).mean() > 0.8


def test_mouth_jitter_warps_all_five_frames_alike():
    from synctalk.audio.sync_model import _jitter_geometry

    g = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 1, 48, 96) * 255
    stacks = frame.expand(-1, 5, -1, -1).contiguous()
    out = _jitter_geometry(stacks, g, 0.08, 0.12, 8.0)
    assert out.shape == stacks.shape and not torch.allclose(out, stacks)
    # One transform per stack: every frame of a stack moves the same way (timing untouched).
    torch.testing.assert_close(out, out[:, :1].expand(-1, 5, -1, -1))
    torch.testing.assert_close(_jitter_geometry(stacks, g, 0.0, 0.0, 0.0), stacks, atol=1e-2, rtol=0)  # 0-255 scale
