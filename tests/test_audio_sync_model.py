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
from synctalk.audio.sync_model import preset, sync_accuracy, train_sync_model
from synctalk.errors import InputError

N_FRAMES, N_TRAIN = 170, 145


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    env = np.repeat(np.clip(np.convolve(rng.random(N_FRAMES), np.ones(3) / 3, "same"), 0, 1), 640)
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
    assert acc["windows"] == (N_FRAMES - N_TRAIN + 60) - 2 * (2 + 6) and acc["max_offset"] == 6
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
