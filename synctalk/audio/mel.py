"""The Wav2Lip / SyncTalk mel spectrogram, in torch (float32, no librosa or numba at run time).

Parameters are the original's hparams (original-synctalk.md §2.2): 16 kHz, pre-emphasis 0.97, STFT
n_fft 800 / hop 200 / win 800 (periodic Hann, centred with reflect padding as librosa < 0.10 did),
80 Slaney mels 55-7600 Hz on the *magnitude* spectrum, 20*log10 with floor 1e-5, minus 20 dB ref,
then mapped from [-100, 0] dB to [-4, 4] and clipped. Output is [80, T] with T = 1 + len // 200.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from synctalk.audio import SAMPLE_RATE

N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above (librosa's htk=False).
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    log_region = hz >= min_log_hz
    mel = np.where(log_region, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)
    return mel


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """[n_mels, n_fft//2+1] float64 triangular filters, Slaney area normalisation (librosa default)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def preemphasis(wav: torch.Tensor, coef: float = PREEMPHASIS) -> torch.Tensor:
    """y[0] = x[0], y[n] = x[n] - coef * x[n-1] (scipy lfilter([1, -coef], [1]))."""
    return torch.cat([wav[..., :1], wav[..., 1:] - coef * wav[..., :-1]], dim=-1)


def num_mel_frames(num_samples: int) -> int:
    return 1 + num_samples // HOP


def melspectrogram(wav: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """Normalised log-mel [80, T] float32 of a 16 kHz mono signal (numpy or torch, 1-D)."""
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32) if not torch.is_tensor(wav) else wav)
    x = x.to(device=device, dtype=torch.float32).reshape(-1)
    if x.numel() <= N_FFT // 2:
        raise ValueError(f"need more than {N_FFT // 2} samples for a centred STFT, got {x.numel()}")
    return log_mel_of_padded(nn_reflect_pad(preemphasis(x)))


def nn_reflect_pad(y: torch.Tensor) -> torch.Tensor:
    """The centred STFT's padding: N_FFT//2 reflected samples on each side (librosa < 0.10 default)."""
    return torch.nn.functional.pad(y[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]


def log_mel_of_padded(padded: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel of an already pre-emphasised and padded signal: frame t = padded[200t:200t+800]."""
    window = torch.hann_window(WIN, periodic=True, dtype=torch.float32, device=padded.device)
    spec = torch.stft(padded, n_fft=N_FFT, hop_length=HOP, win_length=WIN, window=window,
                      center=False, return_complex=True).abs()
    fb = torch.tensor(mel_filterbank(), dtype=torch.float32, device=padded.device)
    mel = fb @ spec
    db = 20.0 * torch.log10(torch.clamp(mel, min=10 ** (MIN_LEVEL_DB / 20.0))) - REF_LEVEL_DB
    normed = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS_VALUE
    return torch.clamp(normed, -MAX_ABS_VALUE, MAX_ABS_VALUE)
