"""The fused shading kernel and the marcher's rounds on CUDA against their PyTorch references."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_fused_shading_matches_packed_reference():
    from test_render_shade import field_forward, random_field_inputs

    from synctalk.render.shade import FUSED_WEIGHT_DTYPE, pack_field, shade_packed_reference
    from synctalk.render.shade_triton import shade_fused

    field, points, dirs, codes, expressions, frames = random_field_inputs(n=5000)
    field = field.cuda()
    points, dirs, codes, expressions, frames = (t.cuda() for t in (points, dirs, codes, expressions, frames))
    packed = pack_field(field, FUSED_WEIGHT_DTYPE)
    with torch.no_grad():
        features = field.grid(points)
        sigma_ref, rgb_ref = shade_packed_reference(packed, features, dirs, frames, codes, expressions)
        sigma, rgb = shade_fused(packed, features, dirs, frames, codes, expressions)
    # Same arithmetic; tensor-core products round their fp32 operands to TF32 (10 mantissa bits) and
    # accumulate in another order: compare densities in log space and colours absolutely.
    log_err = (sigma.log() - sigma_ref.log()).abs()
    assert float(log_err.mean()) < 1e-2 and float(log_err.max()) < 0.1, (float(log_err.mean()), float(log_err.max()))
    rgb_err = (rgb - rgb_ref).abs()
    assert float(rgb_err.mean()) < 2e-3 and float(rgb_err.max()) < 2e-2, (float(rgb_err.mean()), float(rgb_err.max()))
    # and against the field's own fp32 forward (what training evaluates)
    s32, c32 = field_forward(field, points, dirs, codes, expressions, frames)
    assert float((rgb - c32).abs().mean()) < 5e-3


def test_fused_march_rounds_match_torch_marcher(tmp_path):
    from dataclasses import fields

    from test_render_engine import synthetic_data, train_and_export

    from synctalk.nerf.data import TrainData
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import load_head_model

    cpu = synthetic_data(n=8, size=64)
    data = TrainData(**{f.name: (getattr(cpu, f.name).cuda() if torch.is_tensor(getattr(cpu, f.name))
                                 else getattr(cpu, f.name)) for f in fields(TrainData)})
    train_and_export(tmp_path, data, head_steps=30, device="cuda", amp=True)
    engine = HeadRenderer(load_head_model(tmp_path, "cuda"), data.intrinsics, "cuda", max_samples=32)
    assert engine._fused and engine._fused_shade
    from synctalk.render.shade import pack_field

    frames = torch.tensor([6, 7, 1, 2], device="cuda")
    args = (data.c2w[frames], engine.audio_codes(data.audio, frames), data.expressions[frames],
            data.bg[frames].float() / 255)
    fast = engine.render(*args)
    engine._fused = engine._fused_shade = False
    engine.packed = pack_field(engine.field, torch.float32)
    slow = engine.render(*args)
    assert abs(slow.samples - fast.samples) <= 1e-3 * slow.samples + 2, (slow.samples, fast.samples)
    assert float((slow.rgb - fast.rgb).abs().mean()) < 2e-3 and float(fast.alpha.max()) > 0.05
