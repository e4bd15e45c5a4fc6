"""PSNR / SSIM against an independent float64 numpy reference and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.metrics.image import psnr, ssim, to_image_batch


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Straight from the paper's formula with a full 2-D 11x11 Gaussian window, float64, valid positions."""
    half = 5
    ax = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(x.shape[0]):
        wx = np.lib.stride_tricks.sliding_window_view(x[c], (11, 11))
        wy = np.lib.stride_tricks.sliding_window_view(y[c], (11, 11))
        mx = (wx * g).sum(axis=(-2, -1))
        my = (wy * g).sum(axis=(-2, -1))
        sxx = ((wx - mx[..., None, None]) ** 2 * g).sum(axis=(-2, -1))
        syy = ((wy - my[..., None, None]) ** 2 * g).sum(axis=(-2, -1))
        sxy = ((wx - mx[..., None, None]) * (wy - my[..., None, None]) * g).sum(axis=(-2, -1))
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        per_channel.append(m.mean())
    return float(np.mean(per_channel))


@pytest.fixture(scope="module")
def image_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    base = np.stack([np.sin(3 * xx + c) * 0.3 + 0.5 + 0.2 * yy for c in range(3)])
    base = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    other = np.clip(base * 0.9 + 0.05 + rng.normal(0, 0.08, base.shape), 0, 1)
    return base, other


def test_psnr_matches_formula_per_image(image_pair):
    a, b = image_pair
    pred = torch.tensor(np.stack([a, b]))
    gt = torch.tensor(np.stack([b, b]))
    values = psnr(pred, gt)
    expected = -10 * math.log10(float(np.mean((a - b) ** 2)))
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(expected, abs=1e-9)
    assert math.isinf(values[1].item())


def test_psnr_known_value():
    gt = torch.zeros(1, 3, 8, 8)
    pred = torch.full((1, 3, 8, 8), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(pred, gt).item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_independent_reference(image_pair):
    a, b = image_pair
    expected = _reference_ssim(a, b)
    got64 = ssim(torch.tensor(a)[None], torch.tensor(b)[None]).item()
    got32 = ssim(torch.tensor(a, dtype=torch.float32)[None], torch.tensor(b, dtype=torch.float32)[None]).item()
    assert 0.2 < expected < 0.95  # a non-trivial pair
    assert got64 == pytest.approx(expected, abs=1e-10)
    assert got32 == pytest.approx(expected, abs=2e-4)


def test_ssim_identical_is_one_and_noise_lowers_it_monotonically(image_pair):
    a, _ = image_pair
    gt = torch.tensor(a, dtype=torch.float32)[None]
    assert ssim(gt, gt).item() == pytest.approx(1.0, abs=1e-5)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(gt.shape, generator=gen)
    scores = [ssim((gt + s * noise).clamp(0, 1), gt).item() for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores


def test_ssim_batched_equals_single_and_has_gradients(image_pair):
    a, b = image_pair
    pred = torch.tensor(np.stack([a, b]), dtype=torch.float32, requires_grad=True)
    gt = torch.tensor(np.stack([b, a]), dtype=torch.float32)
    batch = ssim(pred, gt)
    single = ssim(pred[1:2], gt[1:2])
    assert batch[1].item() == pytest.approx(single.item(), abs=1e-6)
    (1 - batch).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_to_image_batch_and_errors():
    frames = np.zeros((2, 16, 20, 3), np.uint8)
    frames[1] = 255
    t = to_image_batch(frames)
    assert t.shape == (2, 3, 16, 20) and t.dtype == torch.float32 and t[1].min() == 1.0
    with pytest.raises(ValueError):
        psnr(t, t[:1])
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))  # smaller than the window
