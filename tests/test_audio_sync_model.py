"""Subject-trained sync model: mechanics on synthetic data (learning quality is benchmarked, see
benchmarks/bench_audio.py), artefact files, train-split isolation, and the augmentation invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio.augment import augment_windows, voice_variant, warp_mel_axis
from synctalk.audio.ave import audio_features, load_original_ave
from synctalk.audio.features import AVE_META, FEATURES, build_from_arrays, load_sync_model, save_sync_model
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
    lip = 0.09 + 0.02 * np.sin(np.arange(N_FRAMES) / 2.0)       # the real lip heights (lip_probe)
    facts = build_from_arrays(tmp_path, wav, crops, N_TRAIN, _cfg(), lip)
    assert facts["audio_feature_frames"] == N_FRAMES
    assert set(facts["ave_lip_probe"]) == {"r_train", "r_test", "std_ratio_test", "components"}
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
    assert '"test_sync"' in meta and '"loss_last"' in meta and '"lip_probe"' in meta
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


def test_spec_masks_keep_shape_and_only_replace_with_the_window_mean():
    from synctalk.audio.augment import mask_windows

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 1, 80, 16)
    assert mask_windows(w, g, 0, 0) is w
    out = mask_windows(w, g, 4, 12)
    changed = out != w
    assert out.shape == w.shape and changed.any()
    mean = w.mean(dim=(2, 3), keepdim=True).expand_as(w)
    torch.testing.assert_close(out[changed], mean[changed])
    # A time mask spans at most 4 whole mel frames (every bin of them); a frequency mask at most 12 bins.
    time_cols = changed.all(dim=2).sum(dim=-1)
    freq_rows = changed.all(dim=3).sum(dim=-1)
    assert int(time_cols.max()) <= 4 and int(freq_rows.max()) <= 12 and int(time_cols.max()) > 0


def test_wide_stack_jaw_crop_dropout_and_validation_slice(tmp_path: Path):
    """The options beyond the original net: a 9-frame stack on 88x96 jaw crops, a narrower mouth net with
    dropout, mirrored stacks, and early stopping on a held-out slice of the TRAIN frames only."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    n, n_train = 240, 200
    env = np.repeat(np.clip(np.convolve(rng.random(n), np.ones(3) / 3, "same"), 0.05, 1), 640)
    wav = (rng.standard_normal(n * 640) * 0.2 * env).astype(np.float32)
    crops = rng.integers(0, 256, (n, 88, 96), dtype=np.uint8)
    cfg = _cfg(steps=4, stack=9, crop="jaw", mouth_width=16, mouth_dropout=0.2, mouth_flip=True,
               audio_time_mask=4, audio_freq_mask=12, val_fraction=0.25, val_every=2)
    model, stats = train_sync_model(wav, crops, n_train, cfg)
    assert stats["n_train_frames"] == 150 and stats["val_frames"] == [150, 200]
    assert [v["step"] for v in stats["val_curve"]] == [2, 4] and stats["val_best_step"] in (2, 4)
    assert model.stack == 9 and model.crop == "jaw"
    acc = sync_accuracy(model, wav, crops, range(n_train, n), max_offset=6)
    assert {"within_tolerance_span13", "within_tolerance_span25"} <= acc.keys()
    # Saved and reloaded with its shape (stack, width, crop region) from the file's metadata alone.
    save_sync_model(tmp_path, model, {"training": stats}, crop=cfg.crop)
    loaded = load_sync_model(tmp_path)
    assert loaded.stack == 9 and loaded.crop == "jaw"
    again = sync_accuracy(loaded, wav, crops, range(n_train, n), max_offset=6)
    assert again["within_tolerance"] == acc["within_tolerance"] and again["exact"] == acc["exact"]


def test_validation_slice_never_sees_frames_past_the_train_split():
    torch.set_num_threads(1)
    wav, crops = _synthetic()
    cfg = _cfg(steps=4, val_fraction=0.3, val_every=2)
    m1, s1 = train_sync_model(wav, crops, N_TRAIN, cfg)
    wav2, crops2 = wav.copy(), crops.copy()
    crops2[N_TRAIN:] = 255 - crops2[N_TRAIN:]
    wav2[N_TRAIN * 640 + 3200:] = 0.0
    m2, s2 = train_sync_model(wav2, crops2, N_TRAIN, cfg)
    assert s1["val_curve"] == s2["val_curve"] and s1["val_best_step"] == s2["val_best_step"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_span_score_averages_neighbouring_windows():
    """Per-window curves that half the time peak at the wrong offset, but whose mean over 13 windows
    peaks at the true one: the aggregated curve (a cumulative-sum window mean) picks 0 everywhere."""
    from synctalk.audio.sync_model import _span_mean

    sims = torch.zeros(20, 31)
    sims[:, 15] = 1.0                 # true offset 0 wins on average
    sims[::2, 3] = 1.5                # every other window prefers offset -12 on its own
    per_window = sims.argmax(1)
    assert (per_window == 3).sum() == 10
    mean = _span_mean(sims, 13)
    assert (mean.argmax(1) == 15).all()
    torch.testing.assert_close(_span_mean(sims, 1), sims)


def test_jaw_crop_is_centred_below_the_lips_at_the_same_scale():
    from synctalk.audio.mouth import (EYE_OUTER_LEFT, EYE_OUTER_RIGHT, LOWER_OUTER_LIP, MOUTH_LEFT, MOUTH_RIGHT,
                                      UPPER_OUTER_LIP, mouth_crop_transforms)

    lms = np.zeros((1, 478, 3), np.float32)
    lms[0, EYE_OUTER_RIGHT, :2], lms[0, EYE_OUTER_LEFT, :2] = (100, 100), (200, 100)   # eye distance 100 px
    lms[0, MOUTH_LEFT, :2], lms[0, MOUTH_RIGHT, :2] = (130, 200), (170, 200)
    lms[0, UPPER_OUTER_LIP, :2], lms[0, LOWER_OUTER_LIP, :2] = (150, 190), (150, 210)
    lips, jaw = mouth_crop_transforms(lms, "lips")[0], mouth_crop_transforms(lms, "jaw")[0]
    np.testing.assert_allclose(lips[:, :2], jaw[:, :2])                   # same scale and rotation
    np.testing.assert_allclose(lips @ [150, 200, 1], [48, 24], atol=1e-4)  # lips centre -> crop centre
    np.testing.assert_allclose(jaw @ [150, 220, 1], [48, 44], atol=1e-4)   # 0.2 eye distances lower
    with pytest.raises(InputError):
        mouth_crop_transforms(lms, "nose")


def test_mouth_weights_without_shape_metadata_load_as_the_original_net(tmp_path: Path):
    """Files written before the stack/width/crop options carry no such metadata: they hold the
    5-frame, width-32 lips net and must still load."""
    from safetensors.torch import save_file

    from synctalk.audio.ave import original_state_dict
    from synctalk.audio.sync_model import SyncModel

    model = SyncModel()
    (tmp_path / "audio").mkdir()
    save_file({k: v.contiguous() for k, v in original_state_dict(model.audio).items()},
              str(tmp_path / "audio" / "ave.safetensors"))
    mouth = {f"mouth.{k}": v.contiguous() for k, v in model.mouth.state_dict().items()}
    mouth["log_scale"] = model.log_scale.detach().clone()
    save_file(mouth, str(tmp_path / "audio" / "mouth.safetensors"), metadata={"layout": "synctalk-mouth-encoder"})
    loaded = load_sync_model(tmp_path)
    assert loaded.stack == 5 and loaded.crop == "lips"
    for (k, a), b in zip(model.mouth.state_dict().items(), loaded.mouth.state_dict().values()):
        assert torch.equal(a, b), k
