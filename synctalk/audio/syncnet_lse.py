"""LSE-D / LSE-C with the joonson ``syncnet_python`` SyncNet (the metric SyncTalk and Wav2Lip report).

NO REAL WEIGHTS ARE AVAILABLE HERE: ``syncnet_v2.model`` (VGG, Oxford) is not on PyPI and cannot be
downloaded offline. Everything in this module is tested with random weights only (shapes and plumbing);
a score is meaningful only with the user's own copy of the official weights (``--syncnet PATH``).

Architecture (``SyncNetModel.S``), rebuilt here from its published layer list, key-compatible:
- ``netcnnaud`` Conv2d/BN/ReLU stack over MFCC [B, 1, 13, 20] -> 512, ``netfcaud`` 512-512-BN-1024;
- ``netcnnlip`` Conv3d/BN3d/ReLU stack over 5 BGR frames [B, 3, 5, 224, 224] (raw 0-255) -> 512,
  ``netfclip`` 512-512-BN-1024.
Evaluation (``SyncNetInstance.evaluate``): video window v = frames [v, v + 5), audio window = MFCC
columns [4v, 4v + 20) (0.2 s); Euclidean distances of the 1024-d embeddings for audio shifted by
-15..+15 windows, with out-of-range audio replaced by ZERO features (the original pads that way, so
edge windows pay a penalty; kept for comparability); ``mdist`` = mean over windows per shift;
LSE-D = min(mdist), LSE-C = median(mdist) - min(mdist), offset = 15 - argmin (the original's sign: a
positive offset means the matching audio comes EARLIER than the video, i.e. -(our av_sync offset)).
Face crops follow ``run_pipeline.crop_video``: a face box median-filtered over 13 frames, side
2 x 1.4 x half-size, top at the box centre minus the half-size (so the crop reaches below the chin),
grey (110) outside the image, resized to 224 x 224. We take the box from face-mesh landmarks instead
of S3FD detections (no S3FD weights offline), which makes the crop slightly tighter at the forehead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synctalk.audio import SAMPLES_PER_FRAME
from synctalk.audio.mfcc import mfcc
from synctalk.errors import InputError, MissingWeightsError
from synctalk.log import get_logger, progress
from synctalk.weights import load_into, read_state_dict

log = get_logger("audio.syncnet")

VSHIFT = 15
STACK = 5                 # video frames per window
MFCC_PER_FRAME = 4        # 100 Hz MFCC / 25 fps
MFCC_WINDOW = 20
CROP = 224
CROP_SCALE = 0.4          # run_pipeline --crop_scale
BOX_SMOOTH = 13           # run_pipeline's median filter over the track
PAD_VALUE = 110           # run_pipeline pads frames with this grey
EMBED_DIM = 1024


def _conv2d(cin: int, cout: int, pool: tuple[tuple[int, int], tuple[int, int]] | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool is not None:
        layers.append(nn.MaxPool2d(kernel_size=pool[0], stride=pool[1]))
    return layers


def _conv3d(cin: int, cout: int, kernel, stride=(1, 1, 1), padding=(0, 0, 0)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBED_DIM))


class SyncNet(nn.Module):
    """syncnet_python's ``S``: state-dict keys ``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``."""

    def __init__(self) -> None:
        super().__init__()
        # Sequential indices must match the original (ReLU/MaxPool occupy slots), hence the flat lists.
        self.netcnnaud = nn.Sequential(
            *_conv2d(1, 64, ((1, 1), (1, 1))),
            *_conv2d(64, 192, ((3, 3), (1, 2))),
            *_conv2d(192, 384, None),
            *_conv2d(384, 256, None),
            *_conv2d(256, 256, ((3, 3), (2, 2))),
            nn.Conv2d(256, 512, (5, 4), 1, 0), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = nn.Sequential(
            *_conv3d(3, 96, (5, 7, 7), (1, 2, 2)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d(256, 512, (1, 6, 6)),
        )

    def forward_audio(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] -> [B, 1024]."""
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] BGR in 0..255 -> [B, 1024]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept bare ``S`` keys and the prefixes of SyncNetInstance (``__S__.``) and DataParallel."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "__S__."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_syncnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNet:
    """Load user-supplied SyncNet weights (``syncnet_v2.model`` or its safetensors conversion), eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"SyncNet weights not found at {path}; none ship with synctalk or can be downloaded here - "
            "obtain syncnet_v2.model from joonson/syncnet_python yourself and pass its path")
    hint = (f"If you trust the file, convert it once with `python -m synctalk.audio.syncnet_convert {path} "
            "OUT.safetensors --trust-pickle` and pass OUT")
    state = _normalise_keys(read_state_dict(path, pickle_hint=hint))
    model = load_into(SyncNet(), state, path, "a syncnet_python SyncNet")
    return model.to(device).eval()


@dataclass(frozen=True)
class LSEScore:
    lse_d: float               # min over shifts of the mean embedding distance (lower = better sync)
    lse_c: float               # median minus min of that curve (higher = more confident)
    offset: int                # original sign: vshift - argmin (> 0: matching audio is earlier)
    windows: int
    vshift: int
    mean_distance: list[float]  # per shift -vshift..+vshift (audio index minus video index)

    def to_json(self) -> dict:
        return asdict(self)


def mfcc_windows(wav: np.ndarray, n_windows: int) -> torch.Tensor:
    """[n_windows, 1, 13, 20] MFCC windows, window v = columns [4v, 4v + 20)."""
    cep = mfcc(wav).T.astype(np.float32)                     # [13, T]
    need = MFCC_PER_FRAME * (n_windows - 1) + MFCC_WINDOW
    if cep.shape[1] < need:
        raise InputError(f"audio is too short for {n_windows} SyncNet windows")
    idx = MFCC_PER_FRAME * np.arange(n_windows)[:, None] + np.arange(MFCC_WINDOW)[None, :]
    return torch.from_numpy(np.ascontiguousarray(cep[:, idx].transpose(1, 0, 2)))[:, None]


def distance_curve(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """[W, 2*vshift+1] distances of video window i to audio window i + s (zero features off the ends)."""
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    idx = torch.arange(len(video_emb))[:, None] + torch.arange(2 * vshift + 1)[None, :]
    # pairwise_distance adds eps=1e-6 to the difference, as the original's call does.
    return torch.nn.functional.pairwise_distance(video_emb[:, None, :].expand(-1, idx.shape[1], -1),
                                                 padded[idx])


@torch.no_grad()
def lse_score(model: SyncNet, crops_bgr: np.ndarray, wav: np.ndarray, vshift: int = VSHIFT,
              batch_size: int = 20) -> LSEScore:
    """LSE of [N, 224, 224, 3] uint8 BGR face crops (25 fps) against 16 kHz ``wav``."""
    if crops_bgr.ndim != 4 or crops_bgr.shape[1:] != (CROP, CROP, 3):
        raise ValueError(f"crops must be [N, {CROP}, {CROP}, 3] BGR, got {crops_bgr.shape}")
    n = min(len(crops_bgr), len(wav) // SAMPLES_PER_FRAME)
    windows = n - STACK   # the original's range(0, min_length - 5)
    if windows < 1:
        raise InputError(f"need more than {STACK} frames with audio for SyncNet, got {n}")
    device = next(model.parameters()).device
    audio_in = mfcc_windows(wav, windows)
    video, audio = [], []
    for i in progress(range(0, windows, batch_size), "syncnet", total=-(-windows // batch_size), unit="batch"):
        j = min(windows, i + batch_size)
        clip = torch.from_numpy(np.ascontiguousarray(crops_bgr[i:j + STACK - 1])).to(device)
        clip = clip.permute(3, 0, 1, 2).float()                              # [3, T, H, W]
        stacks = torch.stack([clip[:, k:k + STACK] for k in range(j - i)])   # [B, 3, 5, H, W]
        video.append(model.forward_video(stacks).float().cpu())
        audio.append(model.forward_audio(audio_in[i:j].to(device)).float().cpu())
    dists = distance_curve(torch.cat(video), torch.cat(audio), vshift)
    mdist = dists.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    return LSEScore(lse_d=float(minval), lse_c=float(torch.median(mdist) - minval), offset=vshift - int(minidx),
                    windows=windows, vshift=vshift, mean_distance=[float(d) for d in mdist])


def face_boxes(lms: np.ndarray) -> np.ndarray:
    """[N, 3] (half size, centre x, centre y) of each frame's landmark box, median-filtered over 13 frames."""
    from scipy.signal import medfilt

    lo, hi = lms[:, :, :2].min(axis=1), lms[:, :, :2].max(axis=1)
    size = np.maximum(hi - lo, 1.0).max(axis=1) / 2
    centre = (lo + hi) / 2
    k = min(BOX_SMOOTH, len(lms) if len(lms) % 2 else len(lms) - 1)
    if k >= 3:
        size, cx, cy = (medfilt(a.astype(np.float64), k) for a in (size, centre[:, 0], centre[:, 1]))
    else:
        cx, cy = centre[:, 0], centre[:, 1]
    return np.stack([size, cx, cy], axis=1)


def face_crops(frames_rgb: Iterable[np.ndarray], lms: np.ndarray) -> np.ndarray:
    """[N, 224, 224, 3] uint8 BGR crops in run_pipeline's geometry (see the module docstring)."""
    import cv2

    boxes = face_boxes(lms)
    out = np.zeros((len(lms), CROP, CROP, 3), np.uint8)
    n = 0
    for i, frame in enumerate(progress(frames_rgb, "syncnet crops", total=len(lms), unit="frame")):
        if i >= len(lms):
            break
        bs, mx, my = boxes[i]
        side = 2 * bs * (1 + CROP_SCALE)
        x0, y0 = mx - bs * (1 + CROP_SCALE), my - bs
        scale = CROP / side
        m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        out[i] = cv2.warpAffine(bgr, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(PAD_VALUE,) * 3)
        n += 1
    if n != len(lms):
        raise InputError(f"video has {n} frames but landmarks cover {len(lms)}")
    return out


def score_video_lse(video: str | os.PathLike, weights: str | os.PathLike, audio: str | os.PathLike | None = None,
                    device: str = "cpu") -> LSEScore:
    """Face mesh -> 224^2 crops -> SyncNet LSE of ``video`` against its own audio or ``audio``."""
    from synctalk.audio.av_sync import load_talking_video
    from synctalk.io.video import iter_frames

    model = load_syncnet(weights, device)   # fail on bad weights before the slow face mesh
    lms, wav = load_talking_video(video, audio)
    crops = face_crops(iter_frames(video), lms)
    return lse_score(model, crops, wav)
