"""The trainer on CUDA (fused kernels, bf16 autocast, fused AdamW) on the synthetic scene of
tests/test_nerf_train.py. Usage: PYTHONPATH=. python -m pytest tests_gpu -q"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_nerf_train import synthetic_data, tiny_cfg  # noqa: E402

from synctalk.nerf.trainer import Trainer  # noqa: E402


def cuda_data():
    data = synthetic_data()
    for name in ("gt", "bg", "head", "c2w", "intrinsics", "expressions", "audio", "head_box", "face_rect",
                 "lower_face", "lip_box", "train_ids", "test_ids"):
        setattr(data, name, getattr(data, name).cuda())
    return data


def test_cuda_training_fits_and_round_trips(tmp_path):
    cfg = tiny_cfg(head_steps=150, rays_per_step=2048, lips_steps=4, device="cuda", amp=True)
    trainer = Trainer(cuda_data(), cfg, tmp_path)
    assert trainer.autocast and trainer.device.type == "cuda"
    first = trainer.head_step()
    trainer.stage_step = 0
    stats = trainer.train_stage("head")
    assert stats["psnr"] > -10 * math.log10(float(first["mse"])) + 5.0
    trainer.train_stage("lips")
    trainer.save(tmp_path / "ck")
    again = Trainer(cuda_data(), replace(cfg), tmp_path)
    again.load(tmp_path / "ck")
    for (name, a), (_, b) in zip(trainer.field.state_dict().items(), again.field.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(trainer.grid.occupied, again.grid.occupied)
    # A resumed CUDA run continues (atomics make it close to, not bit-equal with, an uninterrupted one).
    again.cfg = replace(cfg, lips_steps=6)
    again.train_stage("lips")
    assert again.stage_step == 6
