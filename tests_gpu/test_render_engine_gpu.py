"""The fast render engine on CUDA (fused Triton kernels, bf16 MLPs) against the reference render."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_engine_matches_reference_on_cuda(tmp_path):
    from test_render_engine import synthetic_data, train_and_export

    from synctalk.nerf.data import TrainData
    from synctalk.nerf.render_views import render_frame
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import load_head_model

    cpu = synthetic_data(n=8, size=64)
    data = TrainData(**{f.name: (getattr(cpu, f.name).cuda() if torch.is_tensor(getattr(cpu, f.name))
                                 else getattr(cpu, f.name)) for f in fields(TrainData)})
    trainer = train_and_export(tmp_path, data, head_steps=60, device="cuda", amp=True)
    model = load_head_model(tmp_path, "cuda")
    engine = HeadRenderer(model, data.intrinsics, "cuda")
    frames = torch.tensor([6, 7, 1, 2], device="cuda")
    out = engine.render(data.c2w[frames], engine.audio_codes(data.audio, frames), data.expressions[frames],
                        data.bg[frames].float() / 255)
    with trainer.ema_weights():
        refs = [render_frame(trainer, int(i)) for i in frames]
    assert out.rays < len(frames) * 64 * 64, out.rays
    # The Triton marcher against the torch lattice marcher: the same samples up to cell-face rounding.
    assert engine._fused
    engine._fused = False
    slow = engine.render(data.c2w[frames], engine.audio_codes(data.audio, frames), data.expressions[frames],
                         data.bg[frames].float() / 255)
    engine._fused = True
    assert abs(slow.samples - out.samples) <= 1e-3 * slow.samples + 2, (slow.samples, out.samples)
    assert float((slow.rgb - out.rgb).abs().max()) < 5e-2
    for k, ref in enumerate(refs):
        diff = (out.rgb[k] - ref).abs()
        # bf16 MLPs in both; only GEMM tiling over different row counts may differ.
        assert float(diff.mean()) < 2e-3 and float(diff.max()) < 5e-2, (float(diff.mean()), float(diff.max()))
