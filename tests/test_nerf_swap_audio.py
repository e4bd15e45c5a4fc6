"""`swap_audio_rays`: extra head-step rays rendered with other frames' audio, their opacity pulled to 1
inside the GT face (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from synctalk.errors import StageError
from synctalk.nerf.trainer import Trainer

from test_nerf_train import synthetic_data, tiny_cfg


def _spy(trainer: Trainer) -> list:
    """Record (batch, codes) of every render the trainer makes (this instance only)."""
    seen = []
    real = trainer.render_rays

    def spy(batch, codes, jitter, max_samples=None):
        seen.append((batch, codes.detach().clone()))
        return real(batch, codes, jitter, max_samples)

    trainer.render_rays = spy
    return seen


def test_off_by_default_and_one_extra_render_per_step_when_on(tmp_path):
    data = synthetic_data()
    counts = {}
    for rays in (0, 96):
        trainer = Trainer(data, tiny_cfg(swap_audio_rays=rays, head_steps=3), tmp_path / f"s{rays}")
        seen = _spy(trainer)
        trainer.train_stage("head")
        counts[rays] = seen
    assert len(counts[0]) == 3 and len(counts[96]) == 6
    batch, _ = counts[96][1]                       # the extra render of the first step
    assert batch.xs.shape[0] == 96                 # swap_audio_rays rays, spread over the step's images
    # The step's own batch drew the same rays as with the option off (the extra draws come after).
    assert torch.equal(counts[0][0][0].xs, counts[96][0][0].xs)


def test_term_is_weighted_mean_transparency_over_face_rays(tmp_path):
    data = synthetic_data()
    trainer = Trainer(data, tiny_cfg(swap_audio_rays=128, lambda_swap_opacity=0.5), tmp_path / "t")
    real = trainer.render_rays

    def quarter_opaque(batch, codes, jitter, max_samples=None):
        out = real(batch, codes, jitter, max_samples)
        out["opacity"] = torch.full_like(out["opacity"], 0.25)
        return out

    trainer.render_rays = quarter_opaque
    term = trainer._swap_audio_opacity()
    assert float(term) == pytest.approx(0.5 * 0.75, abs=1e-6)


def _term_with_rays_opaque_inside(trainer: Trainer, rects: torch.Tensor) -> float:
    """The swap term when rays inside ``rects`` (per frame) are opaque and all others fully transparent."""
    real = trainer.render_rays

    def opaque_in_rects(batch, codes, jitter, max_samples=None):
        out = real(batch, codes, jitter, max_samples)
        r = rects[batch.frames]
        inside = (batch.xs >= r[:, 0]) & (batch.xs < r[:, 2]) & (batch.ys >= r[:, 1]) & (batch.ys < r[:, 3])
        out["opacity"] = inside.to(out["opacity"].dtype)
        return out

    trainer.render_rays = opaque_in_rects
    return float(trainer._swap_audio_opacity())


def test_lower_region_only_asks_the_lower_face(tmp_path):
    data = synthetic_data()
    lower = Trainer(data, tiny_cfg(swap_audio_rays=512, swap_audio_region="lower"), tmp_path / "l")
    face = Trainer(data, tiny_cfg(swap_audio_rays=512), tmp_path / "f")
    # A head opaque only in its lower face satisfies the lower-region term, not the whole-face one.
    assert _term_with_rays_opaque_inside(lower, data.lower_face) == 0.0
    assert _term_with_rays_opaque_inside(face, data.lower_face) > 0.0


def test_unknown_region_is_refused(tmp_path):
    with pytest.raises(StageError, match="swap_audio_region"):
        Trainer(synthetic_data(), tiny_cfg(swap_audio_rays=8, swap_audio_region="mouth"), tmp_path / "u")
