"""MFCCs exactly as ``python_speech_features.mfcc`` computes them with its defaults (numpy only).

SyncNet (joonson ``syncnet_python``) was trained on these features, so LSE-C/LSE-D are only comparable
with published numbers if the audio front end matches: 16 kHz, 25 ms frames every 10 ms (100 Hz) with a
RECTANGULAR window (the library's default ``winfunc``), pre-emphasis 0.97, |rfft 512|^2 / 512, 26 HTK-mel
triangles 0-8000 Hz on integer FFT bins, natural log, orthonormal DCT-II keeping 13, sinusoidal lifter 22,
and coefficient 0 replaced by the log frame energy.

The original reads the wav as int16 (``scipy.io.wavfile``), i.e. samples in +-32768, and that scale only
shifts coefficient 0 (log energy); we take float samples in [-1, 1] and rescale so c0 matches too.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.fft import dct

from synctalk.audio import SAMPLE_RATE

WIN_LENGTH = 400      # 0.025 s at 16 kHz (round half up)
WIN_STEP = 160        # 0.010 s
N_FFT = 512
N_FILTERS = 26
N_CEPSTRA = 13
CEP_LIFTER = 22
PREEMPHASIS = 0.97
MFCC_FPS = SAMPLE_RATE // WIN_STEP   # 100 Hz
INT16_SCALE = 32768.0
_EPS = np.finfo(np.float64).eps


def _hz_to_mel_htk(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz_htk(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=2)
def htk_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_filters: int = N_FILTERS) -> np.ndarray:
    """[n_filters, n_fft//2+1] triangles whose corners sit on integer FFT bins (the library's quirk)."""
    mels = np.linspace(_hz_to_mel_htk(0.0), _hz_to_mel_htk(sample_rate / 2), n_filters + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz_htk(mels) / sample_rate).astype(np.int64)
    fb = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        k = np.arange(lo, mid)
        fb[j, k] = (k - lo) / (mid - lo)
        k = np.arange(mid, hi)
        fb[j, k] = (hi - k) / (hi - mid)
    fb.setflags(write=False)
    return fb


def num_mfcc_frames(num_samples: int) -> int:
    if num_samples <= WIN_LENGTH:
        return 1
    return 1 + int(np.ceil((num_samples - WIN_LENGTH) / WIN_STEP))


def mfcc(wav: np.ndarray) -> np.ndarray:
    """[T, 13] float64 MFCCs of 16 kHz float ``wav`` in [-1, 1]; frame t starts at sample 160 t."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1) * INT16_SCALE
    if x.size == 0:
        raise ValueError("empty signal")
    x = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    n = num_mfcc_frames(x.size)
    padded = np.zeros((n - 1) * WIN_STEP + WIN_LENGTH)
    padded[: x.size] = x                            # the library zero-pads the last partial frame
    idx = np.arange(WIN_LENGTH)[None, :] + WIN_STEP * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(padded[idx], N_FFT)) ** 2 / N_FFT
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, _EPS, energy)
    feat = power @ htk_filterbank().T
    feat = np.log(np.where(feat == 0, _EPS, feat))
    cep = dct(feat, type=2, axis=1, norm="ortho")[:, :N_CEPSTRA]
    cep *= 1 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPSTRA) / CEP_LIFTER)
    cep[:, 0] = np.log(energy)
    return cep
