"""Head field: tri-plane position features + audio and expression conditions gated by the
Face-Sync Controller, density / colour / uncertainty heads (shapes as the original, §2.1 and §2.3).

Per sample x:  f = TriPlaneHashGrid(x) (36-d)
               a = AudioNet(window of 8 AVE features) -> 32-d, smoothed by AudioAttNet (per frame)
               e = 7 upper-face blendshapes (per frame)
  sigma, geo   = sigma_net([f, a * A_aud(f), e * A_expr(f)]),  sigma = exp(h0)
  rgb          = color_net([SH(d), geo, individual_code[frame]])
  uncertainty  = softplus(unc_net(f.detach()))
The gate norms |A_aud|, |A_expr| are returned per sample so the trainer can composite them into
the 2-D "ambient" maps that the masked-attention losses read; |a * A_aud| too (``audio_gated_norm``):
the gate alone can be shrunk for free by a larger code a, the gated product cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.nerf.encoding.hashgrid import HashGridConfig, TriPlaneHashGrid
from synctalk.nerf.encoding.sh import sh_encode


def mlp(dims: list[int]) -> nn.Sequential:
    """Bias-free MLP with ReLU between layers and none after the last (the original's MLP)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# exp(15) ~ 3e6 is already opaque within any dt; the clamp keeps an outlier from overflowing to inf
# (which would poison the compositing with NaN), most of all under bf16 autocast.
MAX_LOG_DENSITY = 15.0


def density_activation(raw: torch.Tensor) -> torch.Tensor:
    """sigma = exp(h0) as the original, computed in fp32 and clamped against overflow."""
    return torch.exp(raw.float().clamp(max=MAX_LOG_DENSITY))


class AudioNet(nn.Module):
    """Per-frame 512-d AVE feature -> 32-d audio code (MLP 512-256-128-32, LeakyReLU 0.02)."""

    def __init__(self, in_dim: int = 512, out_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 256), nn.LeakyReLU(0.02, inplace=True),
                                 nn.Linear(256, 128), nn.LeakyReLU(0.02, inplace=True),
                                 nn.Linear(128, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class AudioAttNet(nn.Module):
    """Temporal smoother: softmax weights over a window of per-frame codes [B, W, C] -> [B, C]."""

    def __init__(self, dim: int = 32, window: int = 8) -> None:
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        convs: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv1d(a, b, kernel_size=3, padding=1), nn.LeakyReLU(0.02, inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.weights = nn.Linear(window, window)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        scores = self.convs(codes.transpose(1, 2)).squeeze(1)           # [B, W]
        attention = torch.softmax(self.weights(scores), dim=1)          # [B, W]
        return (attention.unsqueeze(-1) * codes).sum(dim=1)


@dataclass(frozen=True)
class HeadFieldConfig:
    grid: HashGridConfig = HashGridConfig()
    audio_in: int = 512
    audio_dim: int = 32
    audio_window: int = 8
    expression_dim: int = 7
    hidden: int = 64
    geo_dim: int = 64
    sh_degree: int = 4
    individual_codes: int = 20000
    individual_dim: int = 4


class HeadField(nn.Module):
    def __init__(self, cfg: HeadFieldConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HeadFieldConfig()
        self.grid = TriPlaneHashGrid(cfg.grid)
        pos_dim = self.grid.output_dim
        self.audio_net = AudioNet(cfg.audio_in, cfg.audio_dim)
        self.audio_att = AudioAttNet(cfg.audio_dim, cfg.audio_window)
        self.audio_gate = mlp([pos_dim, cfg.hidden, cfg.audio_dim])
        self.expression_gate = mlp([pos_dim, cfg.hidden, cfg.expression_dim])
        self.sigma_net = mlp([pos_dim + cfg.audio_dim + cfg.expression_dim, cfg.hidden, cfg.hidden, 1 + cfg.geo_dim])
        self.color_net = mlp([cfg.sh_degree**2 + cfg.geo_dim + cfg.individual_dim, cfg.hidden, 3])
        self.uncertainty_net = mlp([pos_dim, 32, 1])
        self.individual = nn.Parameter(torch.randn(cfg.individual_codes, cfg.individual_dim) * 0.1)

    def encode_audio(self, window: torch.Tensor) -> torch.Tensor:
        """AVE features of frames [i-4, i+3]: [W, 512] or [B, W, 512] -> smoothed code [B, 32]."""
        if window.dim() == 2:
            window = window.unsqueeze(0)
        if window.shape[1] != self.cfg.audio_window:
            raise ValueError(f"audio window must hold {self.cfg.audio_window} frames, got {window.shape[1]}")
        return self.audio_att(self.audio_net(window))

    def forward(self, points: torch.Tensor, dirs: torch.Tensor, audio_code: torch.Tensor,
                expression: torch.Tensor, frame_index: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """points/dirs [N, 3]; audio_code [32] or [N, 32]; expression [7] or [N, 7];
        frame_index selects the individual appearance code (None = code 0, as the original's test path)."""
        n = points.shape[0]
        features = self.grid(points)
        audio_gate = self.audio_gate(features)
        expression_gate = F.relu(self.expression_gate(features))
        audio = audio_code.reshape(-1, self.cfg.audio_dim).expand(n, -1)
        expr = expression.reshape(-1, self.cfg.expression_dim).to(features.dtype).expand(n, -1)
        gated_audio = audio * audio_gate
        hidden = self.sigma_net(torch.cat([features, gated_audio, expr * expression_gate], dim=-1))
        sigma = density_activation(hidden[:, 0])
        geo = hidden[:, 1:]
        index = torch.as_tensor(0 if frame_index is None else frame_index, device=points.device).long()
        code = self.individual.index_select(0, index.reshape(-1)).expand(n, -1)
        color_in = torch.cat([sh_encode(dirs, self.cfg.sh_degree).to(geo.dtype), geo, code], dim=-1)
        rgb = torch.sigmoid(self.color_net(color_in).float()) * (1 + 2e-3) - 1e-3
        uncertainty = F.softplus(self.uncertainty_net(features.detach()).float()).squeeze(-1)
        return {"sigma": sigma, "rgb": rgb, "uncertainty": uncertainty,
                "audio_gate_norm": audio_gate.float().norm(dim=-1),
                "audio_gated_norm": gated_audio.float().norm(dim=-1),
                "expression_gate_norm": expression_gate.float().norm(dim=-1)}

    def density(self, points: torch.Tensor, audio_code: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Density alone (occupancy-grid updates): skips colour and uncertainty heads."""
        features = self.grid(points)
        n = points.shape[0]
        audio = audio_code.reshape(-1, self.cfg.audio_dim).expand(n, -1)
        expr = expression.reshape(-1, self.cfg.expression_dim).to(features.dtype).expand(n, -1)
        gated = [features, audio * self.audio_gate(features), expr * F.relu(self.expression_gate(features))]
        return density_activation(self.sigma_net(torch.cat(gated, dim=-1))[:, 0])
