"""Packed inference shading (synctalk.render.shade) and the engine's early-terminating march rounds (CPU)."""

from __future__ import annotations

import torch

from synctalk.nerf.field import HeadField
from synctalk.render.shade import pack_field, shade_packed_reference


def random_field_inputs(n: int = 400, frames: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    field = HeadField()
    with torch.no_grad():  # trained-like magnitudes, so gates, ReLUs and the density clamp all act
        field.grid.embeddings.uniform_(-1.0, 1.0)
        for p in field.parameters():
            p.mul_(2.0)
        field.sigma_net[4].weight.mul_(8.0)   # log-densities over roughly -10..15 (the clamp)
    points = torch.rand(n, 3) * 1.6 - 0.8
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    codes, expressions = torch.randn(frames, 32), torch.rand(frames, 7)
    sample_frames = torch.randint(0, frames, (n,))
    return field, points, dirs, codes, expressions, sample_frames


def field_forward(field, points, dirs, codes, expressions, sample_frames):
    with torch.no_grad():
        out = field(points, dirs, codes[sample_frames], expressions[sample_frames])
    return out["sigma"], out["rgb"]


def test_packed_fp32_equals_field_forward():
    field, points, dirs, codes, expressions, frames = random_field_inputs()
    sigma_ref, rgb_ref = field_forward(field, points, dirs, codes, expressions, frames)
    assert float(sigma_ref.max()) > 100 and float(sigma_ref.min()) < 1  # a non-trivial density range
    with torch.no_grad():
        sigma, rgb = shade_packed_reference(pack_field(field, torch.float32), field.grid(points), dirs, frames,
                                            codes, expressions)
    assert torch.allclose(sigma, sigma_ref, rtol=1e-5, atol=1e-6)
    assert float((rgb - rgb_ref).abs().max()) < 1e-5


def test_cpu_shading_in_chunks_equals_one_call(monkeypatch):
    from synctalk.render import shade as shade_module

    monkeypatch.setattr(shade_module, "CPU_SHADE_CHUNK", 128)      # 400 samples -> 4 chunks, the last short
    field, points, dirs, codes, expressions, frames = random_field_inputs()
    with torch.no_grad():
        packed, feats = pack_field(field, torch.float32), field.grid(points)
        whole = shade_packed_reference(packed, feats, dirs, frames, codes, expressions)
        chunked = shade_module.shade(packed, feats, dirs, frames, codes, expressions, fused=False)
    assert torch.allclose(chunked[0], whole[0], rtol=1e-6, atol=1e-6) and chunked[0].shape == (400,)
    assert torch.allclose(chunked[1], whole[1], atol=1e-6) and chunked[1].shape == (400, 3)


def test_packed_bf16_rounds_like_autocast():
    """bf16 packing: within bf16 rounding of the fp32 forward, and really rounded (not fp32 in disguise)."""
    field, points, dirs, codes, expressions, frames = random_field_inputs(seed=1)
    sigma_ref, rgb_ref = field_forward(field, points, dirs, codes, expressions, frames)
    with torch.no_grad():
        sigma, rgb = shade_packed_reference(pack_field(field, torch.bfloat16), field.grid(points), dirs, frames,
                                            codes, expressions)
    rel = ((sigma - sigma_ref).abs() / sigma_ref).max()
    assert 0 < float(rel) < 0.2
    assert 0 < float((rgb - rgb_ref).abs().max()) < 0.05


def test_code_bias_uses_the_chosen_individual_code():
    field, points, dirs, codes, expressions, frames = random_field_inputs(n=50)
    with torch.no_grad():
        field.individual[3] = torch.tensor([1.0, -2.0, 0.5, 3.0])
        out = field(points, dirs, codes[frames], expressions[frames], frame_index=3)
        _, rgb = shade_packed_reference(pack_field(field, torch.float32, individual=3), field.grid(points), dirs,
                                        frames, codes, expressions)
    assert float((rgb - out["rgb"]).abs().max()) < 1e-5


def test_march_rounds_and_early_termination(monkeypatch):
    """Rounds of 8/8/16 give the single 32-sample pass's image (< 1e-4) with fewer field evaluations."""
    from test_render_engine import shared_trained

    from synctalk.render import engine as E
    from synctalk.render.model import load_head_model

    work, trainer = shared_trained()
    data = trainer.data
    model = load_head_model(work, "cpu")
    with torch.no_grad():  # the 10-step model is translucent everywhere: make its surface opaque
        model.field.sigma_net[4].weight[0] = model.field.sigma_net[4].weight[0].abs() * 2000.0
    eng = E.HeadRenderer(model, data.intrinsics, "cpu", max_samples=32)
    assert eng.march_rounds() == [8, 8, 16]
    frames = torch.tensor([6, 7, 2])
    args = (data.c2w[frames], eng.audio_codes(data.audio, frames), data.expressions[frames],
            data.bg[frames].float() / 255.0)
    rounds = eng.render(*args)
    monkeypatch.setattr(E, "MARCH_ROUNDS", (32,))
    assert eng.march_rounds() == [32]
    single = eng.render(*args)
    assert float((rounds.rgb - single.rgb).abs().max()) < 1e-4
    assert float((rounds.alpha - single.alpha).abs().max()) < 1e-4
    assert float(rounds.alpha.max()) > 0.999
    assert rounds.samples < 0.9 * single.samples, (rounds.samples, single.samples)
    eng16 = E.HeadRenderer(load_head_model(work, "cpu"), data.intrinsics, "cpu", max_samples=20)
    monkeypatch.setattr(E, "MARCH_ROUNDS", (8, 8, 16))
    assert eng16.march_rounds() == [8, 8, 4]
