"""The SyncNet audio encoder (Wav2Lip ``SyncNet_color`` audio branch), as used by SyncTalk's AVE.

Layer-for-layer and key-for-key compatible with the original ``audio_visual_encoder.pth``: that file
holds the *bare* ``nn.Sequential`` state dict (keys ``0.conv_block.0.weight`` ...), which SyncTalk loads
by prefixing ``audio_encoder.``. Each block is Conv2d + BatchNorm2d (``conv_block``), an optional
residual add, then ReLU. Input [B, 1, 80, 16] normalised mel, output [B, 512] (not L2-normalised).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synctalk.errors import MissingWeightsError
from synctalk.log import get_logger
from synctalk.weights import load_into, read_state_dict

log = get_logger("audio.ave")

FEATURE_DIM = 512
KEY_PREFIX = "audio_encoder."


class ConvBlock(nn.Module):
    """Wav2Lip's ``Conv2d``: conv + batch-norm, optional identity residual, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _audio_layers() -> nn.Sequential:
    # 80x16 -> (stride 3,1) 27x16 -> (stride 3) 9x6 -> (stride 3,2) 3x3 -> (k3, pad 0) 1x1.
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1),
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 64, 3, (3, 1), 1),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 128, 3, 3, 1),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 256, 3, (3, 2), 1),
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, 512, 1, 1, 0),
    )


class AudioEncoder(nn.Module):
    """mel window [B, 1, 80, 16] -> feature [B, 512]."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = _audio_layers()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(mel).flatten(1)


def original_state_dict(model: AudioEncoder) -> dict[str, torch.Tensor]:
    """The model's weights in the original file's layout (bare Sequential keys)."""
    return {k[len(KEY_PREFIX):]: v for k, v in model.state_dict().items()}


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept the bare original layout, our prefixed layout, and DataParallel's ``module.``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        out[k if k.startswith(KEY_PREFIX) else KEY_PREFIX + k] = value
    return out


def load_original_ave(path: str | os.PathLike, device: str | torch.device = "cpu") -> AudioEncoder:
    """Load the original ``audio_visual_encoder.pth`` (or any file in its layout) safely, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"AVE weights not found at {path}; supply SyncTalk's audio_visual_encoder.pth or use the "
            "subject-trained sync model (the default)")
    state = _normalise_keys(read_state_dict(path))
    model = load_into(AudioEncoder(), state, path, "a SyncTalk/Wav2Lip audio encoder")
    return model.to(device).eval()


@torch.no_grad()
def encode_windows(model: AudioEncoder, windows: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """[N, 1, 80, 16] mel windows -> [N, 512] float32 features (eval mode, batched)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(windows[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(windows), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM), np.float32)


def audio_features(model: AudioEncoder, wav: np.ndarray, n_frames: int | None = None) -> np.ndarray:
    """Per-video-frame [n_frames, 512] features of 16 kHz mono ``wav`` (the original AVE pipeline)."""
    from synctalk.audio.mel import melspectrogram
    from synctalk.audio.windows import frame_windows

    device = next(model.parameters()).device
    return encode_windows(model, frame_windows(melspectrogram(wav, device=device), n_frames))
