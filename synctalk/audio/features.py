"""Per-subject audio artefacts: train the sync model and store the AVE + per-frame features.

Files (inside the subject directory, all written atomically):
- ``audio/ave.safetensors``   AudioEncoder weights in the ORIGINAL key layout (``0.conv_block.0.weight``
  ...), loadable by ``load_original_ave`` exactly like SyncTalk's ``audio_visual_encoder.pth``;
- ``audio/mouth.safetensors`` the matching mouth encoder (+ ``log_scale``), for sync scoring;
- ``audio/ave.json``          how it was trained (config, timings, loss, held-out sync accuracy);
- ``audio/features.npy``      [n_frames, 512] float32 AVE features of the subject's own audio.wav.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.audio.ave import AudioEncoder, audio_features, load_original_ave, original_state_dict
from synctalk.audio.sync_model import SyncModel, SyncTrainConfig, sync_accuracy, train_sync_model
from synctalk.io.atomic import atomic_path, write_json
from synctalk.log import get_logger

log = get_logger("audio.features")

AUDIO_DIR = "audio"
AVE_WEIGHTS = f"{AUDIO_DIR}/ave.safetensors"
MOUTH_WEIGHTS = f"{AUDIO_DIR}/mouth.safetensors"
AVE_META = f"{AUDIO_DIR}/ave.json"
FEATURES = f"{AUDIO_DIR}/features.npy"


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def save_sync_model(root: Path, model: SyncModel, meta: dict, crop: str = "lips") -> None:
    _save_safetensors(root / AVE_WEIGHTS, original_state_dict(model.audio), {"layout": "wav2lip-audio-encoder"})
    mouth = {f"mouth.{k}": v for k, v in model.mouth.state_dict().items()}
    mouth["log_scale"] = model.log_scale.detach()
    # The mouth net's shape is in the metadata so load_sync_model can rebuild it without ave.json.
    first = model.mouth.layers[0].conv_block[0]
    _save_safetensors(root / MOUTH_WEIGHTS, mouth, {
        "layout": "synctalk-mouth-encoder", "stack": str(model.stack), "mouth_width": str(first.out_channels),
        "crop": crop})
    write_json(root / AVE_META, meta)


def load_sync_model(root: str | os.PathLike, device: str | torch.device = "cpu") -> SyncModel:
    """The subject's sync model; its mouth crops must be made with ``mouth_crops(..., region=model.crop)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    root = Path(root)
    with safe_open(str(root / MOUTH_WEIGHTS), framework="pt") as f:
        info = f.metadata() or {}
    # Files written before the stack/width/crop options hold the original 5-frame, width-32 lips net.
    model = SyncModel(stack=int(info.get("stack", 5)), mouth_width=int(info.get("mouth_width", 32)))
    model.crop = info.get("crop", "lips")
    model.audio = load_original_ave(root / AVE_WEIGHTS)
    state = load_file(str(root / MOUTH_WEIGHTS))
    model.mouth.load_state_dict({k[len("mouth."):]: v for k, v in state.items() if k.startswith("mouth.")})
    model.log_scale.data.copy_(state["log_scale"])
    return model.to(device).eval()


def load_subject_ave(root: str | os.PathLike, device: str | torch.device = "cpu") -> AudioEncoder:
    return load_original_ave(Path(root) / AVE_WEIGHTS, device=device)


def build_from_arrays(root: Path, wav: np.ndarray, crops: np.ndarray, n_train: int,
                      cfg: SyncTrainConfig, lip: np.ndarray | None = None) -> dict:
    """Train on the train frames, measure held-out sync accuracy, write every artefact; returns facts.
    With the real lip heights [N] (``mouth.lip_height``), also how well the features predict them
    linearly on train vs test frames (``lip_probe``: a large gap = features that leak the training mouths)."""
    from synctalk.audio.lip_probe import lip_probe

    n_frames = len(crops)
    model, stats = train_sync_model(wav, crops, n_train, cfg)
    accuracy = sync_accuracy(model, wav, crops, range(n_train, n_frames), cfg.eval_max_offset)
    log.info("held-out sync: %.1f %% of %d voiced test windows within +-1 frame (exact %.1f %%)",
             100 * accuracy["within_tolerance"], accuracy["windows"], 100 * accuracy["exact"])
    features = audio_features(model.audio, wav, n_frames)
    probe = lip_probe(features, lip, n_train) if lip is not None else None
    if probe:
        log.info("features -> real lip height (ridge, fitted on train): r %.2f on train, %.2f on test",
                 probe["r_train"], probe["r_test"])
    save_sync_model(root, model, {"training": stats, "test_sync": accuracy, "feature_dim": 512,
                                  "n_frames": n_frames, "lip_probe": probe}, crop=cfg.crop)
    save_npy(root / FEATURES, features.astype(np.float32))
    return {"ave_test_sync_within_1": accuracy["within_tolerance"],
            "ave_test_sync_within_1_all_windows": accuracy["within_tolerance_all"],
            "ave_test_sync_within_1_span13": accuracy.get("within_tolerance_span13"),
            "ave_train_seconds": stats["seconds"],
            "ave_lip_probe": probe,
            "audio_feature_frames": n_frames}


def load_subject_arrays(root: str | os.PathLike, crop: str = "lips") -> tuple[np.ndarray, np.ndarray, int]:
    """(16 kHz audio, [N, H, W] uint8 mouth crops of region ``crop``, n_train) of a prepared subject."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.mouth import mouth_crops
    from synctalk.io.video import iter_frames

    sub = S.Subject(root)
    wav = load_driving_audio(sub.path(S.AUDIO))
    crops = mouth_crops(iter_frames(sub.path(S.FRAMES)), sub.landmarks(), crop)
    return wav, crops, sub.split.n_train


def build_subject_audio(root: str | os.PathLike, cfg: SyncTrainConfig) -> dict:
    """Train the subject's sync model from a prepared subject directory (audio.wav, frames, landmarks)."""
    from synctalk.audio.mouth import lip_height

    wav, crops, n_train = load_subject_arrays(root, cfg.crop)
    return build_from_arrays(Path(root), wav, crops, n_train, cfg, lip_height(S.Subject(root).landmarks()))
