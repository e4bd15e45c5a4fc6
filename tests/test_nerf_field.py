"""Head field: parameter counts as the original (§2.1/§2.3), output shapes, gradient flow."""

from __future__ import annotations

import torch

from synctalk.nerf.field import AudioAttNet, AudioNet, HeadField


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_original_layer_shapes() -> None:
    field = HeadField()
    assert count(field.grid) == 3 * 163_584
    assert count(AudioNet()) == 512 * 256 + 256 + 256 * 128 + 128 + 128 * 32 + 32
    assert count(AudioAttNet()) == (32 * 16 * 3 + 16) + (16 * 8 * 3 + 8) + (8 * 4 * 3 + 4) + (4 * 2 * 3 + 2) \
        + (2 * 3 + 1) + (8 * 8 + 8)
    assert count(field.sigma_net) == 75 * 64 + 64 * 64 + 64 * 65
    assert count(field.color_net) == (16 + 64 + 4) * 64 + 64 * 3
    assert count(field.audio_gate) == 36 * 64 + 64 * 32 and count(field.expression_gate) == 36 * 64 + 64 * 7
    total = count(field)
    assert 0.74e6 < total < 0.80e6  # "roughly 0.77M" in the reference notes


def test_forward_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    field = HeadField()
    window = torch.randn(8, 512)
    code = field.encode_audio(window)
    assert code.shape == (1, 32)
    points = torch.rand(257, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(257, 3), dim=-1)
    out = field(points, dirs, code, torch.rand(7), frame_index=5)
    assert out["sigma"].shape == (257,) and (out["sigma"] > 0).all()
    assert out["rgb"].shape == (257, 3) and out["rgb"].min() >= -1e-3 and out["rgb"].max() <= 1 + 1e-3
    assert out["uncertainty"].shape == (257,) and (out["uncertainty"] >= 0).all()
    loss = out["rgb"].sum() + out["sigma"].sum() + out["audio_gate_norm"].sum() + out["uncertainty"].sum()
    loss.backward()
    assert field.grid.embeddings.grad.abs().sum() > 0
    assert field.audio_net.net[0].weight.grad.abs().sum() > 0  # audio reaches density
    assert field.individual.grad[5].abs().sum() > 0 and field.individual.grad[0].abs().sum() == 0
    # Uncertainty reads detached features: it must not move the grid (only the colour/density paths do).
    field.zero_grad()
    field(points, dirs, code, torch.rand(7))["uncertainty"].sum().backward()
    assert field.grid.embeddings.grad is None or field.grid.embeddings.grad.abs().sum() == 0
    expression = torch.rand(7)
    with torch.no_grad():
        assert torch.allclose(field.density(points, code, expression), field(points, dirs, code, expression)["sigma"])
