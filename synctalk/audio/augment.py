"""Voice augmentation so a sync model trained on one speaker generalises to other voices/languages.

Two levels, both timing-preserving (a shifted mouth/audio pair would teach the wrong offset):
- waveform variants, made once per training run: gain, additive noise at a random SNR, a random
  tilt EQ and a reverb-like tail (convolution with decaying noise);
- per-window mel transforms, every step: warping along the mel axis (moves pitch harmonics *and*
  formants, like a different vocal tract) and a random level offset.
"""

from __future__ import annotations

import numpy as np
import torch

from synctalk.audio import SAMPLE_RATE
from synctalk.audio.mel import MAX_ABS_VALUE, MIN_LEVEL_DB


def voice_variant(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One randomly degraded copy of ``wav`` with the same length and timing."""
    from scipy.signal import fftconvolve, lfilter  # imported here: ~0.6 s, and rendering never needs it

    x = wav.astype(np.float64)
    # Tilt EQ: a one-pole low-pass or high-pass mixed with the dry signal (a brighter/duller voice).
    a = rng.uniform(0.3, 0.9)
    low = lfilter([1 - a], [1, -a], x)
    x = x + rng.uniform(-0.6, 0.6) * (low if rng.random() < 0.5 else x - low)
    if rng.random() < 0.7:  # reverb-like tail: 20-250 ms exponentially decaying noise
        n = int(SAMPLE_RATE * rng.uniform(0.02, 0.25))
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 4))
        ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct-to-reverberant ratio
        x = fftconvolve(x, ir / np.abs(ir).sum() * 4, mode="full")[: len(x)]
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    snr_db = rng.uniform(5, 35)
    x = x + rng.standard_normal(len(x)) * rms / 10 ** (snr_db / 20)
    x *= rng.uniform(0.2, 0.9) / (np.abs(x).max() + 1e-9)
    return x.astype(np.float32)


def warp_mel_axis(windows: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Resample [B, 1, 80, W] windows along the mel axis by per-window ``factors`` (>1 = higher voice)."""
    n_mels = windows.shape[2]
    src = torch.arange(n_mels, device=windows.device, dtype=windows.dtype)[None, :] / factors[:, None]
    src = src.clamp(0, n_mels - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_mels - 1)
    frac = (src - lo.to(src.dtype))[:, None, :, None]
    idx_lo = lo[:, None, :, None].expand(-1, windows.shape[1], -1, windows.shape[3])
    idx_hi = hi[:, None, :, None].expand(-1, windows.shape[1], -1, windows.shape[3])
    return torch.gather(windows, 2, idx_lo) * (1 - frac) + torch.gather(windows, 2, idx_hi) * frac


def augment_windows(windows: torch.Tensor, generator: torch.Generator, warp: float = 0.15,
                    gain_db: float = 6.0) -> torch.Tensor:
    """Random mel-axis warp in [1/(1+warp), 1+warp] and a +-gain_db level offset per window."""
    b = windows.shape[0]
    u = torch.rand(b, generator=generator, device=windows.device) * 2 - 1
    factors = torch.exp(u * np.log1p(warp))
    out = warp_mel_axis(windows, factors.to(windows.dtype))
    per_db = 2 * MAX_ABS_VALUE / (-MIN_LEVEL_DB)  # normalised units per dB
    offset = (torch.rand(b, 1, 1, 1, generator=generator, device=windows.device) * 2 - 1) * gain_db * per_db
    return (out + offset).clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE)


def mask_windows(windows: torch.Tensor, generator: torch.Generator, max_time: int = 0,
                 max_freq: int = 0) -> torch.Tensor:
    """SpecAugment-style masks on [B, 1, 80, W] windows: per window one span of 0..max_time mel frames
    and one band of 0..max_freq mel bins set to the window's mean level (not to silence, which would
    look like a pause). Timing-preserving: the unmasked rest stays where it was."""
    if max_time <= 0 and max_freq <= 0:
        return windows
    b, _, n_mels, width = windows.shape
    dev = windows.device
    mean = windows.mean(dim=(2, 3), keepdim=True)
    keep = torch.ones(b, 1, n_mels, width, dtype=torch.bool, device=dev)
    for size, axis, extent in ((max_time, 3, width), (max_freq, 2, n_mels)):
        if size <= 0:
            continue
        length = torch.randint(0, size + 1, (b,), generator=generator, device=dev)
        start = (torch.rand(b, generator=generator, device=dev) * (extent - length + 1)).long()
        pos = torch.arange(extent, device=dev)[None, :]
        inside = (pos >= start[:, None]) & (pos < (start + length)[:, None])       # [B, extent]
        shape = [b, 1, 1, 1]
        shape[axis] = extent
        keep &= ~inside.view(shape)
    return torch.where(keep, windows, mean)
