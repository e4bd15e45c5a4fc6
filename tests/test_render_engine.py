"""The fast inference engine against the trainer's whole-frame reference render (CPU, tiny model)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.nerf import checkpoint as ckpt
from synctalk.nerf.data import SceneTransform, TrainData
from synctalk.nerf.presets import preset
from synctalk.nerf.render_views import render_frame
from synctalk.nerf.trainer import Trainer

from scenes import look_at_origin

SIZE = 32


def synthetic_frames(n: int = 8, size: int = SIZE) -> dict[str, np.ndarray]:
    """A coloured disc whose lower half darkens with a per-frame 'mouth' value, over a gradient."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size / 4) ** 2
    bg = np.stack([np.full((size, size), 90), xx * (255 // size), yy * (255 // size)], -1).astype(np.uint8)
    gts = []
    for i in range(n):
        gt = bg.copy()
        gt[disc] = (200, 120, 60)
        gt[disc & (yy > size / 2)] = (200 - 10 * (i % 4), 80, 60)
        gts.append(gt)
    poses = np.stack([look_at_origin(0.04 * (i - n / 2)) for i in range(n)])
    return {"gt": np.stack(gts), "bg": np.stack([bg] * n), "head": np.stack([disc.astype(np.uint8)] * n),
            "c2w": poses.astype(np.float32), "focal": np.float32(size * 1.2)}


def synthetic_data(n: int = 8, size: int = SIZE) -> TrainData:
    f = synthetic_frames(n, size)
    box = torch.tensor([[4, 4, size - 4, size - 4]] * n)
    gen = torch.Generator().manual_seed(2)
    return TrainData(
        gt=torch.from_numpy(f["gt"]), bg=torch.from_numpy(f["bg"]), head=torch.from_numpy(f["head"]),
        c2w=torch.from_numpy(f["c2w"]), intrinsics=torch.tensor([f["focal"], f["focal"], size / 2, size / 2]),
        expressions=torch.rand(n, 7, generator=torch.Generator().manual_seed(1)),
        audio=torch.randn(n, 512, generator=gen), head_box=box, face_rect=box,
        lower_face=torch.tensor([[8, 16, size - 8, size - 4]] * n), lip_box=torch.tensor([[10, 16, 22, 28]] * n),
        train_ids=torch.arange(n - 2), test_ids=torch.tensor([n - 2, n - 1]),
        scene=SceneTransform(1.0, (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)))


def tiny_cfg(**kw):
    base = dict(head_steps=10, lips_steps=0, rays_per_step=256, images_per_step=2, occupancy_resolution=16,
                occupancy_every=5, ema_every=2, val_every=1000, checkpoint_every=1000, perceptual="none",
                max_frames=None, downscale=1)
    base.update(kw)
    return preset("tiny", **base)


def train_and_export(workdir, data: TrainData | None = None, **cfg_kw) -> Trainer:
    data = data if data is not None else synthetic_data()
    trainer = Trainer(data, tiny_cfg(**cfg_kw), workdir)
    trainer.train_stage("head")
    # A tiny run leaves stray occupied cells up to the box faces; keep a ball around the head so the
    # projected head box is smaller than the frame (reference and engine share this grid).
    r = trainer.grid.cfg.resolution
    centres = (torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).float() + 0.5) / r * 2 - 1
    trainer.grid.occupied &= (centres.norm(dim=-1) < 0.6).to(trainer.grid.occupied.device)
    ckpt.save_checkpoint(workdir / "head_model", trainer.export_tensors(),
                         {"stage": "head", "scene": data.scene.to_json(), "config": trainer.cfg.to_json(),
                          "frames": data.n_frames, "size": [data.height, data.width]})
    return trainer


@functools.lru_cache(maxsize=1)
def shared_trained() -> tuple[Path, Trainer]:
    """One tiny trained + exported model per test session (the render tests import this)."""
    work = Path(tempfile.mkdtemp(prefix="synctalk_render_"))
    return work, train_and_export(work)


@pytest.fixture(scope="module")
def trained():
    return shared_trained()


def test_engine_matches_reference_render(trained):
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import load_head_model

    work, trainer = trained
    data = trainer.data
    model = load_head_model(work, "cpu")
    engine = HeadRenderer(model, data.intrinsics, "cpu")
    frames = torch.tensor([6, 7, 2])
    codes = engine.audio_codes(data.audio, frames)
    out = engine.render(data.c2w[frames], codes, data.expressions[frames], data.bg[frames].float() / 255.0)
    with trainer.ema_weights():
        refs = [render_frame(trainer, int(i)) for i in frames]
    assert 0 < out.rays < len(frames) * SIZE * SIZE   # the head box skipped some rays
    assert float(out.alpha.max()) > 0.05              # and something was rendered
    for k, ref in enumerate(refs):
        err = (out.rgb[k] - ref).abs().max()
        assert float(err) < 1e-4, f"frame {int(frames[k])}: max abs diff {float(err)}"


def make_subject(root: Path, work: Path, n: int = 8, size: int = SIZE, crop: dict | None = None) -> Path:
    """A prepared-subject directory around the synthetic scene of ``synthetic_frames`` (same poses and
    background as the model ``train_and_export`` trained), with a random audio encoder, so render and
    evaluate run end to end in seconds. The exported model in ``work`` is copied into its workspace."""
    import json
    import shutil

    from synctalk import SUBJECT_FORMAT_VERSION
    from synctalk import subject as S
    from synctalk.audio.ave import AudioEncoder, audio_features, original_state_dict
    from synctalk.io.atomic import save_npz
    from synctalk.io.audio import write_wav
    from synctalk.io.video import VideoWriter
    from synctalk.prepare.maskcodec import MaskWriter
    from safetensors.torch import save_file

    f = synthetic_frames(n, size)
    root.mkdir(parents=True, exist_ok=True)
    n_train = n - 2
    manifest = {"format_version": SUBJECT_FORMAT_VERSION, "frames": n, "fps": 25.0, "width": size, "height": size,
                "split": {"train": [0, n_train], "test": [n_train, n]}, "crop": crop,
                "stages": {"parsing": {"settings": {"portrait_feather_px": 3}}}}
    (root / S.MANIFEST).write_text(json.dumps(manifest))
    save_npz(root / S.POSE, c2w=f["c2w"], intrinsics=np.array([f["focal"], f["focal"], size / 2, size / 2], np.float32))
    save_npz(root / S.EXPRESSIONS, exp=np.random.default_rng(1).random((n, 7)).astype(np.float32))
    for name, frames in ((S.FRAMES, f["gt"]), (S.TORSO, f["bg"])):
        with VideoWriter(root / name, fps=25, crf=0) as w:
            for frame in frames:
                w.write(frame)
    import cv2

    cv2.imwrite(str(root / S.BACKGROUND), cv2.cvtColor(f["bg"][0], cv2.COLOR_RGB2BGR))
    yy = np.mgrid[0:size, 0:size][0]
    labels = np.where(f["head"][0] > 0, S.LABEL_FACE, S.LABEL_BACKGROUND).astype(np.uint8)
    labels[(labels == 0) & (yy > size * 3 // 4)] = S.LABEL_NECK
    for name, mask in ((S.PARSING, labels), (S.PORTRAIT, (f["head"][0] * 255).astype(np.uint8))):
        writer = MaskWriter(root / name, size, size)
        for _ in range(n):
            writer.add(mask)
        writer.close()
    t = np.arange(n * 640) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    write_wav(root / S.AUDIO, wav, 16000)
    from synctalk.audio.load import load_driving_audio

    wav = load_driving_audio(root / S.AUDIO)   # as the audio stage reads it (PCM16)
    torch.manual_seed(3)
    ave = AudioEncoder().eval()
    (root / "audio").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in original_state_dict(ave).items()}, str(root / "audio" / "ave.safetensors"))
    np.save(root / "audio" / "features.npy", audio_features(ave, wav, n).astype(np.float32))
    ws = root / "workspace" / "nerf"
    ws.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(work / f"head_model{suffix}", ws / f"head_model{suffix}")
    return root


def test_walk_indices_ping_pong():
    from synctalk.render.track import walk_indices

    assert walk_indices(9, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert walk_indices(3, 1).tolist() == [0, 0, 0]


def test_smoothing_keeps_rotations_and_blink_none_opens_eyes():
    from synctalk.render.track import BLINK_CHANNELS, build_track

    f = synthetic_frames(8)
    exp = np.random.default_rng(0).random((8, 7)).astype(np.float32)
    track = build_track(f["c2w"], exp, 6, 20, smoothing=2.0, blink="none")
    rot = track.c2w[:, :3, :3].astype(np.float64)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    for c in BLINK_CHANNELS:
        assert np.allclose(track.expressions[:, c], np.percentile(exp[:6, c], 5))
    assert track.frame_ids.max() == 5


def test_reference_render_takes_the_render_sample_budget(trained):
    """``render_frame(max_samples=N)`` (what evaluation uses to match ``synctalk render``'s 32) equals the
    engine at the same budget, and the budget is honoured: one sample per ray renders a different image."""
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import load_head_model

    work, trainer = trained
    data = trainer.data
    engine = HeadRenderer(load_head_model(work, "cpu"), data.intrinsics, "cpu", max_samples=32)
    frames = torch.tensor([6, 1])
    codes = engine.audio_codes(data.audio, frames)
    out = engine.render(data.c2w[frames], codes, data.expressions[frames], data.bg[frames].float() / 255.0)
    with trainer.ema_weights():
        for k, frame in enumerate(frames.tolist()):
            ref = render_frame(trainer, frame, max_samples=32)
            assert float((out.rgb[k] - ref).abs().max()) < 1e-4
            one = render_frame(trainer, frame, max_samples=1)
            assert float((one - ref).abs().max()) > 1e-3
