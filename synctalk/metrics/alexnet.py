"""AlexNet's convolutional stack in plain torch (torchvision cannot be installed beside the CPU torch
here), with torchvision's state-dict key layout so its ImageNet file `alexnet-owt-7be5be79.pth` loads
unchanged. Returns the 5 ReLU outputs that LPIPS-alex compares."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synctalk.errors import InputError
from synctalk.weights import read_state_dict

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
# torchvision `features.<index>` convs: (index, in, out, kernel, stride, padding)
ALEXNET_CONVS = (
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
)
LPIPS_ALEX_CHANNELS = tuple(c[2] for c in ALEXNET_CONVS)  # 64, 192, 384, 256, 256


def load_alexnet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The `features.*` conv tensors of a torchvision AlexNet checkpoint (classifier keys ignored)."""
    state = read_state_dict(path)
    out: dict[str, torch.Tensor] = {}
    for index, cin, cout, k, _, _ in ALEXNET_CONVS:
        w = state.get(f"features.{index}.weight")
        b = state.get(f"features.{index}.bias")
        if w is None or b is None or tuple(w.shape) != (cout, cin, k, k) or tuple(b.shape) != (cout,):
            raise InputError(f"{path} is not a torchvision AlexNet checkpoint (features.{index} missing or mis-shaped)")
        out[f"features.{index}.weight"] = w.float()
        out[f"features.{index}.bias"] = b.float()
    return out


class AlexNetFeatures(nn.Module):
    """conv1 relu1 pool conv2 relu2 pool conv3 relu3 conv4 relu4 conv5 relu5; yields relu1..relu5."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.convs = nn.ModuleList()
        for index, cin, cout, k, stride, pad in ALEXNET_CONVS:
            conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
            conv.weight.data.copy_(state[f"features.{index}.weight"])
            conv.bias.data.copy_(state[f"features.{index}.bias"])
            self.convs.append(conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):  # max-pool 3x3/2 precedes conv2 and conv3
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(conv(x))
            outputs.append(x)
        return outputs
