"""HuBERT / wav2vec2 audio features (the original's ``--asr hubert`` alternative to the AVE).

Only a LOCAL ``transformers`` model directory is accepted (``config.json`` + weights, as written by
``save_pretrained`` or ``huggingface-cli download``); nothing is ever downloaded. The original uses
``facebook/hubert-large-ls960-ft`` (D = 1024): fetch it on a machine with internet and pass its path.

Timing. The conv front end has a 400-sample receptive field and a 320-sample stride, so hidden frame k
covers samples [320k, 320k + 400) (centre 20k + 12.5 ms) at 50 Hz. Video frame i (centre 40i + 20 ms)
takes hidden frames 2i and 2i + 1 (centres 40i + 12.5 and 40i + 32.5 ms), exactly the original's
``aud_hu.npy`` reshape to [N, 2, D]. The model yields 2N - 1 frames for N whole video frames of audio
(the original then drops the odd one and ends up with N - 1 rows); we repeat the last hidden frame so
the output has exactly N = 25 x duration rows, aligned with the 25-fps frames.

Layouts: ``"pairs"`` [N, 2, D] is the original's file; ``"mean"`` [N, D] averages the two 20-ms vectors
(one vector per frame, the shape the NeRF's AudioNet windows consume like the AVE's [N, 512]).

Long audio is cut into clips of ``clip_frames`` hidden frames (default 1000 = 20 s, the original's
320,000 samples); each clip gets 80 extra samples so its conv output has exactly ``clip_frames`` frames
and consecutive clips tile the timeline without gaps. Attention context is per clip (as the original).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from synctalk.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from synctalk.audio.windows import n_video_frames
from synctalk.errors import InputError, MissingWeightsError
from synctalk.log import get_logger, progress

log = get_logger("audio.hubert")

HIDDEN_STRIDE = 320        # samples per hidden frame (50 Hz)
HIDDEN_KERNEL = 400        # receptive field of the conv front end, in samples
FRAMES_PER_VIDEO_FRAME = SAMPLES_PER_FRAME // HIDDEN_STRIDE  # 2
DEFAULT_CLIP_FRAMES = 1000  # 20 s per forward pass, as the original's clip_length
Layout = Literal["pairs", "mean"]


def _missing(path: str | os.PathLike, why: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"HuBERT/wav2vec2 model {why}: {path}; nothing is downloaded here - fetch e.g. "
        "facebook/hubert-large-ls960-ft elsewhere (huggingface-cli download or save_pretrained) "
        "and pass its local directory")


class HubertExtractor:
    """A local HuBERT/wav2vec2 model that turns 16 kHz audio into per-video-frame features."""

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu",
                 clip_frames: int = DEFAULT_CLIP_FRAMES):
        path = Path(model_dir)
        if not path.is_dir():
            raise _missing(model_dir, "directory not found (hub ids are not accepted offline)")
        if not (path / "config.json").is_file():
            raise _missing(model_dir, "directory has no config.json")
        # Both guards: the env var stops huggingface_hub from trying the network (27 s of retries
        # otherwise), local_files_only makes transformers refuse anything not on disk.
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from transformers import AutoModel
        except ImportError:
            raise InputError("HuBERT/wav2vec2 features need the `transformers` package "
                             "(pip install 'synctalk[hubert]')") from None
        try:
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise _missing(model_dir, f"could not be loaded ({str(e).splitlines()[0][:160]})") from None
        cfg = model.config
        stride = int(np.prod(getattr(cfg, "conv_stride", [0])))
        if stride != HIDDEN_STRIDE:
            raise InputError(f"{path.name} is a {cfg.model_type} model without the 320-sample (50 Hz) conv "
                             "front end of HuBERT/wav2vec2; it cannot be aligned to 25-fps frames")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.dim = int(cfg.hidden_size)
        self.model_type = str(cfg.model_type)
        self.normalize = _wants_normalized_input(path, cfg)
        self.clip_frames = int(clip_frames)
        if self.clip_frames < 1:
            raise ValueError("clip_frames must be >= 1")

    @torch.no_grad()
    def hidden_states(self, wav: np.ndarray) -> np.ndarray:
        """[T, D] float32 last hidden state at 50 Hz, T = (len - 80) // 320 (the conv output length)."""
        x = np.asarray(wav, dtype=np.float32).reshape(-1)
        if x.size < HIDDEN_KERNEL:
            raise InputError(f"audio is too short for HuBERT ({x.size} samples, need {HIDDEN_KERNEL})")
        if self.normalize:  # Wav2Vec2FeatureExtractor's do_normalize: zero mean, unit variance per utterance
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        total = (x.size - (HIDDEN_KERNEL - HIDDEN_STRIDE)) // HIDDEN_STRIDE
        starts = list(range(0, total, self.clip_frames))
        out = []
        for k0 in progress(starts, "hubert", unit="clip"):
            k1 = min(k0 + self.clip_frames, total)
            seg = x[k0 * HIDDEN_STRIDE: k1 * HIDDEN_STRIDE + HIDDEN_KERNEL - HIDDEN_STRIDE]
            h = self.model(torch.from_numpy(np.ascontiguousarray(seg))[None].to(self.device)).last_hidden_state[0]
            out.append(h[: k1 - k0].float().cpu())
        hidden = torch.cat(out).numpy()
        if len(hidden) != total:  # cannot happen for a 320-stride front end; fail loudly if it does
            raise InputError(f"{self.model_type} produced {len(hidden)} frames, expected {total}")
        return hidden

    def features(self, wav: np.ndarray, n_frames: int | None = None, layout: Layout = "pairs") -> np.ndarray:
        """Per-video-frame features: [N, 2, D] (``pairs``, the original layout) or [N, D] (``mean``)."""
        if layout not in ("pairs", "mean"):
            raise ValueError(f"layout must be 'pairs' or 'mean', got {layout!r}")
        n = n_video_frames(len(wav)) if n_frames is None else int(n_frames)
        hidden = self.hidden_states(wav)
        return frames_from_hidden(hidden, n, layout)


def frames_from_hidden(hidden: np.ndarray, n_frames: int, layout: Layout = "pairs") -> np.ndarray:
    """Group 50-Hz hidden states [T, D] into n_frames video frames (edge-repeating missing ones)."""
    need = FRAMES_PER_VIDEO_FRAME * n_frames
    idx = np.minimum(np.arange(need), len(hidden) - 1)
    pairs = hidden[idx].reshape(n_frames, FRAMES_PER_VIDEO_FRAME, hidden.shape[-1]).astype(np.float32)
    return pairs if layout == "pairs" else pairs.mean(axis=1)


def _wants_normalized_input(path: Path, cfg) -> bool:
    """Follow the checkpoint's preprocessor_config.json; without one, the wav2vec2 convention: models
    with layer-norm conv front ends (large/ft checkpoints) expect normalised input, group-norm ones not."""
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            return bool(json.loads(pre.read_text()).get("do_normalize", True))
        except json.JSONDecodeError:
            raise InputError(f"{pre} is not valid JSON") from None
    return getattr(cfg, "feat_extract_norm", "group") == "layer"


def hubert_features(model_dir: str | os.PathLike, wav: np.ndarray, n_frames: int | None = None,
                    layout: Layout = "pairs", device: str | torch.device = "cpu") -> np.ndarray:
    """One-shot convenience: load ``model_dir`` and return per-frame features of 16 kHz ``wav``."""
    return HubertExtractor(model_dir, device=device).features(wav, n_frames, layout)


__all__ = ["HubertExtractor", "hubert_features", "frames_from_hidden", "SAMPLE_RATE"]
