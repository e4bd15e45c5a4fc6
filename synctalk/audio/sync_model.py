"""Subject-trained audio-visual sync model: the default AVE, needing no outside weights.

A mouth encoder over 5 stacked grayscale lip crops (48x96) and the SyncNet ``AudioEncoder`` are trained
contrastively (InfoNCE, cosine similarity with a learned temperature) on the subject's TRAIN frames
only. Anchors are voiced frames (sync is undefined in a pause) and each crop stack gets a random
similarity warp (without it the net memorises the ~1600 train crops). For each anchor frame, the
in-sync audio window must beat (a) audio shifted by 2..15 frames (hard negatives: same voice, same
words nearby, wrong timing) and (b) other anchors' audio. Shifts of +-1 frame are never negatives: at
25 fps they overlap 80 % of the window and are "in sync" for evaluation. Audio is voice-augmented
(synctalk.audio.augment) so the encoder keys on articulation, not on timbre.

GPU budget (the ``default`` preset, 71-s clip, target >= 90 % of voiced test windows within +-1 frame
in under 3 minutes on one H100; measured 74 %, see BENCHMARKS-audio.md): everything the loop touches
lives on the device before step 0 (mel spectrograms of every voice variant, all mouth crops as uint8),
so a step is pure tensor work: gather 64 + 64*8 mel windows and 64 crop stacks (warped by one
grid_sample), two small conv nets in bf16 autocast (CUDA only; the CPU path stays fp32), one AdamW
step under a one-cycle schedule (10 % warm-up, cosine decay). The loss is read back to the host only
every ``LOG_EVERY`` steps so the GPU never waits on Python. Evaluation is one batched pass over at
most a few hundred test windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synctalk.audio import SAMPLES_PER_FRAME
from synctalk.audio.augment import augment_windows, voice_variant
from synctalk.audio.ave import AudioEncoder, ConvBlock
from synctalk.audio.mel import melspectrogram
from synctalk.audio.windows import WINDOW_MELS, frame_window_starts
from synctalk.errors import InputError
from synctalk.log import get_logger, progress

log = get_logger("audio.sync")

STACK = 5          # video frames per mouth window (0.2 s, the audio window's span)
HALF = STACK // 2
LOG_EVERY = 50     # at most this many steps between host syncs of the running loss
# Sync is only defined where there is speech: windows this far above the clip's noise floor are "voiced".
# The 71-s clip's test split is ~48 % pauses, which alone capped the old all-window score near 55 %.
VOICED_MARGIN_DB = 10.0
SILENCE_DBFS = -60.0  # window RMS level (dB re full scale) that is never speech
EVAL_BATCH = 1024  # windows per encoder call in sync_accuracy (bounds memory on long test splits)


@dataclass(frozen=True)
class SyncTrainConfig:
    # 2000 steps / weight decay 0.05 / the mouth jitter below: measured on the 71-s clip (H100), 74 % of
    # voiced test windows within +-1 vs 61 % for the earlier 3000 steps / 1e-4 / no jitter, which
    # memorised the train crops (loss 0.012). See BENCHMARKS-audio.md.
    steps: int = 2000
    batch_size: int = 64
    hard_negatives: int = 8        # shifted audio windows per anchor
    min_shift: int = 2
    max_shift: int = 15
    lr: float = 5e-4
    weight_decay: float = 0.05
    voice_variants: int = 6        # augmented waveform copies (plus the clean one)
    mel_warp: float = 0.15
    gain_db: float = 6.0
    train_seconds: float | None = None   # use only the first N seconds of the train split (CPU tests)
    eval_max_offset: int = 15
    seed: int = 0
    device: str = "auto"
    amp: bool = True               # bf16 autocast on CUDA (ignored on CPU)
    # Geometric mouth jitter (one random similarity transform per 5-frame stack, same for all 5 frames so
    # timing is untouched): without it the mouth encoder memorises the ~1600 train crops pixel by pixel.
    mouth_shift: float = 0.08      # max translation, fraction of the crop size
    mouth_scale: float = 0.12      # max relative zoom
    mouth_rotate_deg: float = 8.0  # max rotation
    # Only voiced windows (see ``voiced_windows``) are training anchors; None = every frame. In a pause
    # every offset that also lands in the pause is equally "in sync" (closed mouth, silence), so such
    # anchors are unlearnable positives the model can only memorise. (Pause frames still appear as
    # shifted negatives and inside neighbouring crop stacks.)
    voiced_margin_db: float | None = VOICED_MARGIN_DB


PRESETS = {
    "default": SyncTrainConfig(),
    # CPU smoke configuration: a few seconds of audio, a few hundred small steps.
    "tiny": SyncTrainConfig(steps=200, batch_size=12, hard_negatives=3, voice_variants=1, train_seconds=8.0),
    # The defaults before the voiced-anchor / mouth-jitter fix, kept to reproduce the comparison.
    "legacy": SyncTrainConfig(steps=3000, weight_decay=1e-4, mouth_shift=0.0, mouth_scale=0.0,
                              mouth_rotate_deg=0.0, voiced_margin_db=None),
}


def preset(name: str, **overrides) -> SyncTrainConfig:
    if name not in PRESETS:
        raise InputError(f"unknown sync-model preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class MouthEncoder(nn.Module):
    """[B, 5, 48, 96] lip crops (uint8 range) -> [B, 512]."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(STACK, 32, 5, 1, 2),
            ConvBlock(32, 64, 3, 2, 1), ConvBlock(64, 64, 3, 1, 1, residual=True),      # 24x48
            ConvBlock(64, 128, 3, 2, 1), ConvBlock(128, 128, 3, 1, 1, residual=True),   # 12x24
            ConvBlock(128, 256, 3, 2, 1), ConvBlock(256, 256, 3, 1, 1, residual=True),  # 6x12
            ConvBlock(256, 512, 3, 2, 1), ConvBlock(512, 512, 3, 1, 1, residual=True),  # 3x6
        )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.float() / 127.5 - 1.0
        return self.layers(x).mean(dim=(2, 3))


class SyncModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = AudioEncoder()
        self.mouth = MouthEncoder()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def voiced_windows(wav: np.ndarray, n_frames: int, margin_db: float = 10.0) -> np.ndarray:
    """[n_frames] bool: the 0.2-s audio window centred on the frame carries speech. Label-free (audio only).

    Voiced = at least ``margin_db`` above the noise floor (10th percentile of the clip's window levels)
    and above SILENCE_DBFS. The threshold is capped at ``margin_db`` below the 90th percentile so a clip
    with no pauses at all (floor = speech level) still counts its speech as voiced."""
    x = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float64)
    m = min(len(wav), len(x))
    x[:m] = wav[:m]
    frame_power = np.mean(x.reshape(n_frames, SAMPLES_PER_FRAME) ** 2, axis=1)
    window_db = 10 * np.log10(np.convolve(frame_power, np.ones(STACK) / STACK, mode="same") + 1e-12)
    floor, loud = np.percentile(window_db, [10, 90])
    return (window_db >= min(floor + margin_db, loud - margin_db)) & (window_db >= SILENCE_DBFS)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Windows:
    """Mel windows of one waveform variant per frame, gathered on demand on the device."""

    def __init__(self, mels: torch.Tensor, starts: np.ndarray):
        self.mels = mels                            # [V, 80, T]
        self.starts = torch.as_tensor(starts, device=mels.device)
        self.offsets = torch.arange(WINDOW_MELS, device=mels.device)

    def get(self, frames: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
        idx = self.starts[frames][:, None] + self.offsets[None, :]            # [B, 16]
        m = self.mels[variants]                                              # [B, 80, T]
        w = torch.gather(m, 2, idx[:, None, :].expand(-1, m.shape[1], -1))   # [B, 80, 16]
        return w.unsqueeze(1)


def _jitter_geometry(stacks: torch.Tensor, gen: torch.Generator, shift: float, scale: float,
                     rotate_deg: float) -> torch.Tensor:
    """Random similarity warp of float [B, 5, H, W] stacks, one per sample (bilinear, border-replicated)."""
    b, dev = stacks.shape[0], stacks.device

    def uniform(size: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(size, generator=gen, device=dev) * 2 - 1

    zoom = 1 + scale * uniform((b,))
    angle = math.radians(rotate_deg) * uniform((b,))
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos() / zoom, -angle.sin() / zoom
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin() / zoom, angle.cos() / zoom
    theta[:, :, 2] = 2 * shift * uniform((b, 2))      # affine_grid's [-1, 1] = the full crop
    grid = F.affine_grid(theta, list(stacks.shape), align_corners=False)
    return F.grid_sample(stacks, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _stacks(crops: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    idx = frames[:, None] + torch.arange(-HALF, HALF + 1, device=crops.device)[None, :]
    return crops[idx]  # [B, 5, 48, 96]


def train_sync_model(wav: np.ndarray, crops: np.ndarray, n_train: int, cfg: SyncTrainConfig,
                     ) -> tuple[SyncModel, dict]:
    """Train on frames [0, n_train) of (16 kHz ``wav``, [N,48,96] ``crops``); returns model and stats."""
    n_frames = len(crops)
    if cfg.train_seconds is not None:
        n_train = min(n_train, int(cfg.train_seconds * 25))
    lo, hi = HALF, n_train - HALF - 1           # anchors whose 5-frame stack stays in train
    if hi - lo < 2 * cfg.max_shift + 2:
        raise InputError(f"too few training frames ({n_train}) for +-{cfg.max_shift}-frame negatives")
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t0 = time.perf_counter()

    train_wav = wav[: n_train * 640 + 3200]     # the train split's audio (+0.2 s for the last window)
    variants = [train_wav] + [voice_variant(train_wav, rng) for _ in range(cfg.voice_variants)]
    mels = torch.stack([melspectrogram(v, device=device) for v in variants])
    windows = _Windows(mels, frame_window_starts(n_train, mels.shape[-1]))
    crops_t = torch.as_tensor(crops[:n_train], device=device)
    anchor_pool = np.arange(lo, hi + 1)
    if cfg.voiced_margin_db is not None:
        anchor_pool = anchor_pool[voiced_windows(train_wav, n_train, cfg.voiced_margin_db)[anchor_pool]]
    if len(anchor_pool) < 2 * cfg.batch_size:
        raise InputError(f"only {len(anchor_pool)} training frames have speech; "
                         f"need at least {2 * cfg.batch_size}")
    anchor_pool_t = torch.as_tensor(anchor_pool, device=device)

    if device.type == "cuda":  # fixed shapes every step: let cuDNN pick kernels once; TF32 for fp32 ops
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_amp = cfg.amp and device.type == "cuda"
    model = SyncModel().to(device).train()
    # fused AdamW: one kernel for the whole update instead of a few per parameter tensor (CUDA only).
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    b, m = cfg.batch_size, cfg.hard_negatives
    losses: list[float] = []
    pending = torch.zeros((), device=device)   # loss summed on the device since the last host sync
    log_every = max(1, min(LOG_EVERY, cfg.steps // 20))
    for step in progress(range(cfg.steps), "sync model", unit="step"):
        anchors = anchor_pool_t[torch.randint(0, len(anchor_pool), (b,), generator=gen, device=device)]
        mag = torch.randint(cfg.min_shift, cfg.max_shift + 1, (b, m), generator=gen, device=device)
        sign = torch.randint(0, 2, (b, m), generator=gen, device=device) * 2 - 1
        shifted = anchors[:, None] + mag * sign
        shifted = torch.where((shifted < 0) | (shifted >= n_train), anchors[:, None] - mag * sign, shifted)
        cand = torch.cat([anchors, shifted.reshape(-1)])                      # [b + b*m] audio frames
        var = torch.randint(0, len(variants), (len(cand),), generator=gen, device=device)
        audio_in = augment_windows(windows.get(cand, var), gen, cfg.mel_warp, cfg.gain_db)
        mouth_in = _stacks(crops_t, anchors)
        # Cheap photometric jitter: contrast/brightness per sample.
        jitter = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen, device=device) - 0.5)
        mouth_in = (mouth_in.float() * jitter + 20 * (torch.rand(b, 1, 1, 1, generator=gen, device=device) - 0.5))
        if cfg.mouth_shift or cfg.mouth_scale or cfg.mouth_rotate_deg:
            mouth_in = _jitter_geometry(mouth_in, gen, cfg.mouth_shift, cfg.mouth_scale, cfg.mouth_rotate_deg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            a_raw = model.audio(audio_in)
            v_raw = model.mouth(mouth_in.clamp(0, 255))
        # Similarities and the softmax stay in fp32: bf16 cosine logits x scale 100 would be too coarse.
        a = F.normalize(a_raw.float(), dim=-1)
        v = F.normalize(v_raw.float(), dim=-1)
        logits = model.scale() * v @ a.T                                      # [b, b + b*m]
        # Candidates within +-1 frame of an anchor are in sync with it: never count them as negatives.
        near = (cand[None, :] - anchors[:, None]).abs() <= 1
        near[torch.arange(b), torch.arange(b)] = False
        logits = logits.masked_fill(near, float("-inf"))
        target = torch.arange(b, device=device)
        loss_v2a = F.cross_entropy(logits, target)
        loss_a2v = F.cross_entropy(logits[:, :b].T, target)
        loss = 0.5 * (loss_v2a + loss_a2v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        pending += loss.detach()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            n_since = (step % log_every) + 1
            losses.append(float(pending) / n_since)   # one host sync per log_every steps
            pending.zero_()
    model.eval()
    # ``losses`` holds one mean per log_every steps; first/last = the first/last tenth of training.
    k = max(1, len(losses) // 10)
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = {"steps": cfg.steps, "seconds": time.perf_counter() - t0, "device": str(device), "amp": use_amp,
             "loss_curve": [round(x, 4) for x in losses],
             "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
             "temperature": float(1 / model.scale().detach()), "n_train_frames": n_train, "config": asdict(cfg)}
    log.info("sync model: %d steps in %.1f s on %s, loss %.3f -> %.3f", cfg.steps, stats["seconds"], device,
             stats["loss_first"], stats["loss_last"])
    return model, stats


@torch.no_grad()
def sync_accuracy(model: SyncModel, wav: np.ndarray, crops: np.ndarray, frames: range,
                  max_offset: int = 15, tolerance: int = 1,
                  voiced_margin_db: float | None = VOICED_MARGIN_DB) -> dict:
    """For every window in ``frames`` whose +-max_offset audio stays inside ``frames``: is the best
    offset of the audio against the 5-frame mouth stack within ``tolerance`` of 0?

    ``within_tolerance``/``exact``/``windows`` count only voiced windows (see ``voiced_windows``; all
    windows when ``voiced_margin_db`` is None): sync is undefined in a pause. ``*_all`` count every window."""
    device = next(model.parameters()).device
    n = len(crops)
    mel = melspectrogram(wav, device=device)
    starts = frame_window_starts(n, mel.shape[-1])
    first, last = frames.start + HALF + max_offset, frames.stop - 1 - HALF - max_offset
    if last < first:
        raise InputError(f"the test split ({len(frames)} frames) is too short for +-{max_offset}-frame offsets")
    audio_frames = np.arange(first - max_offset, last + max_offset + 1)
    idx = torch.as_tensor(starts[audio_frames], device=device)[:, None] + torch.arange(WINDOW_MELS, device=device)
    windows = mel[:, idx].permute(1, 0, 2).unsqueeze(1)
    a = F.normalize(torch.cat([model.audio(windows[i:i + EVAL_BATCH]).float()
                               for i in range(0, len(windows), EVAL_BATCH)]), dim=-1)
    anchors = torch.arange(first, last + 1, device=device)
    crops_t = torch.as_tensor(crops[frames.start:frames.stop], device=device)   # only the evaluated frames
    local = anchors - frames.start
    v = F.normalize(torch.cat([model.mouth(_stacks(crops_t, local[i:i + EVAL_BATCH])).float()
                               for i in range(0, len(local), EVAL_BATCH)]), dim=-1)
    offsets = torch.arange(-max_offset, max_offset + 1, device=device)
    rows = (anchors - (first - max_offset))[:, None] + offsets[None, :]     # index into a
    sims = (v[:, None, :] * a[rows]).sum(-1)                                 # [W, 2K+1]
    best_all = offsets[sims.argmax(dim=1)].cpu().numpy()
    if voiced_margin_db is None:
        scored = np.ones(len(best_all), bool)
    else:
        scored = voiced_windows(wav, n, voiced_margin_db)[first:last + 1]
    if not scored.any():
        raise InputError("no test window has speech; cannot measure audio-visual sync")
    best = best_all[scored]
    return {"windows": int(len(best)), "within_tolerance": float(np.mean(np.abs(best) <= tolerance)),
            "exact": float(np.mean(best == 0)), "tolerance": tolerance, "max_offset": max_offset,
            "median_abs_offset": float(np.median(np.abs(best))), "voiced_margin_db": voiced_margin_db,
            "windows_all": int(len(best_all)),
            "within_tolerance_all": float(np.mean(np.abs(best_all) <= tolerance)),
            "offset_histogram": {int(k): int(c) for k, c in zip(*np.unique(best, return_counts=True))}}
