"""Subject-trained audio-visual sync model: the default AVE, needing no outside weights.

A mouth encoder over 5 stacked grayscale lip crops (48x96) and the SyncNet ``AudioEncoder`` are trained
contrastively (InfoNCE, cosine similarity with a learned temperature) on the subject's TRAIN frames
only. Anchors are voiced frames (sync is undefined in a pause) and each crop stack gets a random
similarity warp, the mouth net channel dropout and the audio windows SpecAugment-style masks (without
them the net memorises the ~1600 train crops). For each anchor frame, the
in-sync audio window must beat (a) audio shifted by 2..15 frames (hard negatives: same voice, same
words nearby, wrong timing) and (b) other anchors' audio. Shifts of +-1 frame are never negatives: at
25 fps they overlap 80 % of the window and are "in sync" for evaluation. Audio is voice-augmented
(synctalk.audio.augment) so the encoder keys on articulation, not on timbre.

GPU budget (the ``default`` preset, 71-s clip, target >= 90 % of voiced test windows within +-1 frame
in under 3 minutes on one H100; measured 63 s and 71 % per 0.2-s window, 98 % with the 13-window
aggregated score, see BENCHMARKS.md "Audio sync model benchmarks"): everything the loop touches
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
from synctalk.audio.augment import augment_windows, mask_windows, voice_variant
from synctalk.audio.av_sync import frame_samples
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
# Aggregated-score spans (frames) reported beside the per-window score: 0.52 s and 1 s.
SPANS = (13, 25)


@dataclass(frozen=True)
class SyncTrainConfig:
    # 2000 steps / weight decay 0.05 / the mouth jitter / dropout 0.2 / masks 4+12 below: chosen on a
    # validation slice of the 71-s clip's TRAIN split (H100 sweep, BENCHMARKS.md "Audio sync model
    # benchmarks"): 70 % of voiced validation windows within +-1 vs 64 % without dropout and masks;
    # jaw crops, a 9-frame stack, 16 hard negatives, and 3000 steps with mirrored stacks did not beat it.
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
    # Regularisation against memorising ~1600 frames of one speaker (the mouth net has 4.7 M weights).
    mouth_dropout: float = 0.2     # channel dropout after each mouth stage + dropout on the embedding
    mouth_width: int = 32          # channels of the first mouth stage (doubling per stage, capped at 512)
    audio_time_mask: int = 4       # SpecAugment: mask up to this many of a window's 16 mel frames
    audio_freq_mask: int = 12      # ... and up to this many of its 80 mel bins (set to the window mean)
    # Mirror half of the crop stacks left-right: articulation is (nearly) symmetric, so this doubles the
    # distinct mouth images without changing timing.
    mouth_flip: bool = False
    stack: int = STACK             # video frames per mouth stack (odd; >5 = temporal context beyond the audio)
    crop: str = "lips"             # mouth crop region (synctalk.audio.mouth.CROP_REGIONS)
    # Model selection without the test split: hold out the last ``val_fraction`` of the TRAIN frames,
    # score them every ``val_every`` steps and keep the best weights (0 = train on every train frame).
    val_fraction: float = 0.0
    val_every: int = 250


PRESETS = {
    "default": SyncTrainConfig(),
    # CPU smoke configuration: a few seconds of audio, a few hundred small steps.
    "tiny": SyncTrainConfig(steps=200, batch_size=12, hard_negatives=3, voice_variants=1, train_seconds=8.0),
    # The previous default (mouth jitter + wd 0.05, no dropout, no masks), kept to reproduce the comparison.
    "jitter": SyncTrainConfig(mouth_dropout=0.0, audio_time_mask=0, audio_freq_mask=0),
    # The defaults before the voiced-anchor / mouth-jitter fix, kept to reproduce the comparison.
    "legacy": SyncTrainConfig(steps=3000, weight_decay=1e-4, mouth_shift=0.0, mouth_scale=0.0,
                              mouth_rotate_deg=0.0, voiced_margin_db=None, mouth_dropout=0.0,
                              audio_time_mask=0, audio_freq_mask=0),
}


def preset(name: str, **overrides) -> SyncTrainConfig:
    if name not in PRESETS:
        raise InputError(f"unknown sync-model preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class MouthEncoder(nn.Module):
    """[B, stack, H, W] mouth crops (uint8 range) -> [B, 512]. Fully convolutional + global mean, so any
    crop size works (48x96 lips, 88x96 jaw). Dropout is applied in ``forward`` (no modules), so the
    state-dict keys depend on ``stack``/``width`` only; with 5 / 32 they are the original encoder's."""

    def __init__(self, stack: int = STACK, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        ch = [min(width * 2 ** k, 512) for k in range(5)]
        layers: list[nn.Module] = [ConvBlock(stack, ch[0], 5, 1, 2)]
        for k in range(4):                     # 1/2, 1/4, 1/8, 1/16 of the crop size
            layers += [ConvBlock(ch[k], ch[k + 1], 3, 2, 1), ConvBlock(ch[k + 1], ch[k + 1], 3, 1, 1, residual=True)]
        self.layers = nn.Sequential(*layers)
        # A narrower net ends below 512 channels: a linear map brings it to the AVE's feature size.
        self.project = nn.Linear(ch[-1], 512) if ch[-1] != 512 else None
        self.dropout = dropout

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.float() / 127.5 - 1.0
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.dropout > 0 and i % 2 == 0 and i > 0:   # after each stage's residual block
                x = F.dropout2d(x, self.dropout, self.training)
        x = x.mean(dim=(2, 3))
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        return self.project(x) if self.project is not None else x


class SyncModel(nn.Module):
    def __init__(self, stack: int = STACK, mouth_width: int = 32, mouth_dropout: float = 0.0) -> None:
        super().__init__()
        if stack < STACK or stack % 2 == 0:
            raise InputError(f"mouth stack must be odd and at least {STACK} frames, got {stack}")
        self.stack = stack
        self.crop = "lips"   # the mouth crop region it was trained on (set by the trainer / the loader)
        self.audio = AudioEncoder()
        self.mouth = MouthEncoder(stack, mouth_width, mouth_dropout)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def voiced_windows(wav: np.ndarray, n_frames: int, margin_db: float = 10.0) -> np.ndarray:
    """[n_frames] bool: the 0.2-s audio window centred on the frame carries speech. Label-free (audio only).

    Voiced = at least ``margin_db`` above the noise floor (10th percentile of the clip's window levels)
    and above SILENCE_DBFS. The threshold is capped at ``margin_db`` below the 90th percentile so a clip
    with no pauses at all (floor = speech level) still counts its speech as voiced."""
    frame_power = np.mean(frame_samples(wav, n_frames) ** 2, axis=1)
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


def _stacks(crops: torch.Tensor, frames: torch.Tensor, stack: int = STACK) -> torch.Tensor:
    half = stack // 2
    idx = frames[:, None] + torch.arange(-half, half + 1, device=crops.device)[None, :]
    return crops[idx]  # [B, stack, H, W]


def _validation_split(n_train: int, cfg: SyncTrainConfig) -> int:
    """Frames [0, n_fit) are fitted; [n_fit, n_train) is the validation slice (none when val_fraction=0)."""
    if cfg.val_fraction <= 0:
        return n_train
    n_val = int(round(cfg.val_fraction * n_train))
    if n_val < 2 * (HALF + cfg.eval_max_offset) + 8:
        raise InputError(f"a validation slice of {n_val} frames is too short for +-{cfg.eval_max_offset}-frame "
                         f"offsets; raise val_fraction or train on a longer clip")
    return n_train - n_val


def train_sync_model(wav: np.ndarray, crops: np.ndarray, n_train: int, cfg: SyncTrainConfig,
                     ) -> tuple[SyncModel, dict]:
    """Train on frames [0, n_train) of (16 kHz ``wav``, [N,H,W] ``crops``); returns model and stats.

    With ``cfg.val_fraction`` > 0 the last part of [0, n_train) is only scored (never fitted) and the
    returned model is the checkpoint with the best validation score."""
    if cfg.train_seconds is not None:
        n_train = min(n_train, int(cfg.train_seconds * 25))
    n_val_end = n_train
    n_train = _validation_split(n_train, cfg)
    half = cfg.stack // 2
    lo, hi = half, n_train - half - 1           # anchors whose crop stack stays in the fitted frames
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
    val_curve: list[dict] = []
    best: dict | None = None
    validate = None
    if n_val_end > n_train:
        val_wav = wav[: n_val_end * SAMPLES_PER_FRAME + 3200]
        val_crops = crops[:n_val_end]

        def validate(step: int) -> None:
            nonlocal best
            model.eval()
            acc = sync_accuracy(model, val_wav, val_crops, range(n_train, n_val_end), cfg.eval_max_offset,
                                voiced_margin_db=cfg.voiced_margin_db or VOICED_MARGIN_DB, spans=())
            model.train()
            val_curve.append({"step": step, "within_tolerance": acc["within_tolerance"], "exact": acc["exact"]})
            # ">=": on a tie the later (longer-trained) checkpoint wins.
            if best is None or acc["within_tolerance"] >= best["score"]:
                best = {"score": acc["within_tolerance"], "step": step,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}

    if device.type == "cuda":  # fixed shapes every step: let cuDNN pick kernels once; TF32 for fp32 ops
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_amp = cfg.amp and device.type == "cuda"
    model = SyncModel(cfg.stack, cfg.mouth_width, cfg.mouth_dropout).to(device).train()
    model.crop = cfg.crop
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
        audio_in = mask_windows(audio_in, gen, cfg.audio_time_mask, cfg.audio_freq_mask)
        mouth_in = _stacks(crops_t, anchors, cfg.stack)
        # Cheap photometric jitter: contrast/brightness per sample.
        jitter = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen, device=device) - 0.5)
        mouth_in = (mouth_in.float() * jitter + 20 * (torch.rand(b, 1, 1, 1, generator=gen, device=device) - 0.5))
        if cfg.mouth_flip:
            flip = torch.rand(b, 1, 1, 1, generator=gen, device=device) < 0.5
            mouth_in = torch.where(flip, mouth_in.flip(-1), mouth_in)
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
        if validate is not None and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            validate(step + 1)
    model.eval()
    if best is not None:
        model.load_state_dict(best["state"])
    # ``losses`` holds one mean per log_every steps; first/last = the first/last tenth of training.
    k = max(1, len(losses) // 10)
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = {"steps": cfg.steps, "seconds": time.perf_counter() - t0, "device": str(device), "amp": use_amp,
             "loss_curve": [round(x, 4) for x in losses],
             "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
             "temperature": float(1 / model.scale().detach()), "n_train_frames": n_train, "config": asdict(cfg)}
    if best is not None:
        stats.update(val_frames=[n_train, n_val_end], val_curve=val_curve, val_best_step=best["step"],
                     val_within_tolerance=best["score"])
    log.info("sync model: %d steps in %.1f s on %s, loss %.3f -> %.3f", cfg.steps, stats["seconds"], device,
             stats["loss_first"], stats["loss_last"])
    return model, stats


def _span_mean(sims: torch.Tensor, span: int) -> torch.Tensor:
    """[W, K] similarity curves -> each row's mean over rows [w - span//2, w + span//2] (clipped)."""
    csum = torch.cat([torch.zeros_like(sims[:1]), sims.cumsum(0)])
    w = torch.arange(len(sims), device=sims.device)
    lo = (w - span // 2).clamp(min=0)
    hi = (w + span // 2 + 1).clamp(max=len(sims))
    return (csum[hi] - csum[lo]) / (hi - lo).to(sims.dtype)[:, None]


@torch.no_grad()
def sync_accuracy(model: SyncModel, wav: np.ndarray, crops: np.ndarray, frames: range,
                  max_offset: int = 15, tolerance: int = 1,
                  voiced_margin_db: float | None = VOICED_MARGIN_DB, spans: tuple[int, ...] = SPANS) -> dict:
    """For every window in ``frames`` whose +-max_offset audio stays inside ``frames``: is the best
    offset of the audio against the window's mouth stack within ``tolerance`` of 0?

    ``within_tolerance``/``exact``/``windows`` count only voiced windows (see ``voiced_windows``; all
    windows when ``voiced_margin_db`` is None): sync is undefined in a pause. ``*_all`` count every window.
    This is the per-window score (one 0.2-s audio window against one mouth stack).

    ``within_tolerance_span<S>`` is a DIFFERENT, aggregated score, reported beside it: for each scored
    window, the similarity-vs-offset curves of the S consecutive windows centred on it (clipped to the
    evaluated windows, pauses included) are averaged before picking the best offset, as SyncNet's
    clip-level offset estimate averages over its clip."""
    half = model.stack // 2
    if half > HALF + max_offset:
        raise InputError(f"a {model.stack}-frame mouth stack needs max_offset >= {half - HALF}")
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
    v = F.normalize(torch.cat([model.mouth(_stacks(crops_t, local[i:i + EVAL_BATCH], model.stack)).float()
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
    spans_out = {}
    for span in spans:
        mean_curve = _span_mean(sims, span)
        span_best = offsets[mean_curve.argmax(dim=1)].cpu().numpy()[scored]
        spans_out[f"within_tolerance_span{span}"] = float(np.mean(np.abs(span_best) <= tolerance))
    return {**spans_out, "windows": int(len(best)), "within_tolerance": float(np.mean(np.abs(best) <= tolerance)),
            "exact": float(np.mean(best == 0)), "tolerance": tolerance, "max_offset": max_offset,
            "median_abs_offset": float(np.median(np.abs(best))), "voiced_margin_db": voiced_margin_db,
            "windows_all": int(len(best_all)),
            "within_tolerance_all": float(np.mean(np.abs(best_all) <= tolerance)),
            "offset_histogram": {int(k): int(c) for k, c in zip(*np.unique(best, return_counts=True))}}
