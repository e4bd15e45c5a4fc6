"""AudioEncoder: the original AVE file layout loads, mismatches and unsafe/missing files are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.audio.ave import AudioEncoder, audio_features, load_original_ave, original_state_dict
from synctalk.errors import InputError, MissingWeightsError


def _random_original_file(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = AudioEncoder()
    for m in model.modules():  # non-trivial BN statistics so a wrong load would change the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = original_state_dict(model)
    torch.save(state, path)
    return state


def test_original_key_layout(tmp_path: Path):
    state = _random_original_file(tmp_path / "ave.pth")
    # The original file: bare Sequential keys 0..12, conv_block.{0 conv, 1 bn}; 2.8M parameters.
    assert "0.conv_block.0.weight" in state and "12.conv_block.1.running_var" in state
    assert "audio_encoder.0.conv_block.0.weight" not in state
    assert tuple(state["9.conv_block.0.weight"].shape) == (256, 128, 3, 3)
    assert tuple(state["12.conv_block.0.weight"].shape) == (512, 512, 1, 1)
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked")))
    assert 2_700_000 < n_params < 2_900_000


def test_load_and_encode(tmp_path: Path):
    state = _random_original_file(tmp_path / "ave.pth")
    model = load_original_ave(tmp_path / "ave.pth")
    assert not model.training
    for k, v in state.items():
        assert torch.equal(model.state_dict()["audio_encoder." + k], v)
    x = torch.randn(3, 1, 80, 16)
    assert model(x).shape == (3, 512)
    wav = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    feats = audio_features(model, wav)
    assert feats.shape == (50, 512) and feats.dtype == np.float32
    # Padding semantics: frames 0, 1, 2 all use the first window.
    np.testing.assert_array_equal(feats[0], feats[2])


def test_prefixed_layout_also_loads(tmp_path: Path):
    state = _random_original_file(tmp_path / "a.pth")
    torch.save({"module.audio_encoder." + k: v for k, v in state.items()}, tmp_path / "b.pth")
    load_original_ave(tmp_path / "b.pth")


def test_errors(tmp_path: Path):
    with pytest.raises(MissingWeightsError):
        load_original_ave(tmp_path / "absent.pth")
    state = _random_original_file(tmp_path / "a.pth")
    del state["3.conv_block.0.weight"]
    torch.save(state, tmp_path / "missing_key.pth")
    with pytest.raises(InputError, match="missing 1"):
        load_original_ave(tmp_path / "missing_key.pth")
    state = _random_original_file(tmp_path / "a.pth")
    state["0.conv_block.0.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(InputError, match="wrong shape"):
        load_original_ave(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(InputError):
        load_original_ave(tmp_path / "junk.pth")

    class Evil:  # a pickle that would run code is refused by weights_only loading
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(InputError):
        load_original_ave(tmp_path / "evil.pth")
