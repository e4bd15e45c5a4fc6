"""Full-reference image metrics in torch: PSNR and SSIM, batched, differentiable, device-agnostic.

Images are float tensors [B, C, H, W] (or [C, H, W]) with values in [0, 1]; `to_image_batch` converts
RGB uint8 numpy frames. Both metrics return one value per image ([B]); the dataset figure is the mean
of the per-image values (as the original, which averages per-frame PSNR).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_image_batch(frames: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """RGB uint8 [H,W,3] or [N,H,W,3] (numpy or tensor) -> float32 [N,3,H,W] in [0,1].

    Float tensors already in [N,C,H,W] / [C,H,W] layout pass through (with a batch dim added)."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.dtype == torch.uint8:
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 frames [N,H,W,3], got shape {tuple(t.shape)}")
        t = t.permute(0, 3, 1, 2).float() / 255.0
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected images [N,C,H,W], got shape {tuple(t.shape)}")
    return t.to(device) if device is not None else t


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.ndim == 3:
        pred, gt = pred[None], gt[None]
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be [B,C,H,W] and equal")
    if not pred.is_floating_point():
        raise ValueError("metrics take float images in [0,1]; convert uint8 frames with to_image_batch")
    return pred, gt


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, -10*log10(MSE) with peak 1 ([0,1] images). Identical images give +inf."""
    pred, gt = _check_pair(pred, gt)
    mse = (pred - gt).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size] (the SSIM window is its outer product, applied separably)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter per channel (depthwise conv), [B,C,H,W] -> [B,C,H-k+1,W-k+1]."""
    c = x.shape[1]
    k = taps.numel()
    horizontal = taps.view(1, 1, 1, k).expand(c, 1, 1, k)
    vertical = taps.view(1, 1, k, 1).expand(c, 1, k, 1)
    return F.conv2d(F.conv2d(x, horizontal, groups=c), vertical, groups=c)


def ssim(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03.

    Local statistics use only windows fully inside the image ('valid', as the reference MATLAB code),
    the SSIM map is averaged over positions and then over channels. Differentiable, so `1 - ssim`
    also works as a loss. float64 inputs are computed in float64."""
    pred, gt = _check_pair(pred, gt)
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images at least {window}x{window}, got {tuple(pred.shape[-2:])}")
    taps = gaussian_window(window, sigma, dtype=pred.dtype, device=pred.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x = _blur(pred, taps)
    mu_y = _blur(gt, taps)
    # E[x^2] - E[x]^2 suffers cancellation in float32 near flat regions; the clamp keeps variances >= 0.
    var_x = (_blur(pred * pred, taps) - mu_x**2).clamp_min(0)
    var_y = (_blur(gt * gt, taps) - mu_y**2).clamp_min(0)
    cov = _blur(pred * gt, taps) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * structure).mean(dim=(2, 3)).mean(dim=1)
