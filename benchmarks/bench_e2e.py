"""Benchmark of record (issue 6): the whole product on the prepared 71-s anchor, in two phases.

The GPU machine has no PyAV, mediapipe or dlib, so:

* ``--phase gpu`` (on the GPU machine, one command): copy the prepared subject, train the audio encoder,
  head + lips and torso with the default presets, render the test split in every mode and compute the
  image metrics there with synctalk.evaluate's functions (PSNR, SSIM, the offline perceptual score:
  exact frames, fast on the GPU), render
  the driving clips, and pack the rendered frames as JPEG archives plus ``bench_gpu.json`` into ``--out``
  (at most 6 files, 4 archives of < 15 MiB, so they come back through the device tool's 64 MiB).
* ``--phase score`` (on a CPU machine with dlib + mediapipe + PyAV): unpack, LMD per mode (dlib),
  av_sync per mode and per driving clip (mediapipe), MP4s of the driving clips, one markdown table
  (printed, and written to ``results.md`` / ``results.json``), a contact sheet (GT vs renders) and a few
  frames per driving clip.

Reproduce (from the repo root; docs/results.md)::

    # here: the clips as 16-kHz mono WAVs (the GPU machine cannot resample without PyAV)
    python benchmarks/bench_e2e.py --phase convert --wavs ../shared/data --out .carry/wavs16k
    # GPU machine (carry .carry/anchor .carry/cache .carry/wavs16k):
    python benchmarks/bench_e2e.py --phase gpu --subject .carry/anchor --wavs .carry/wavs16k --out $OUT
    # here, on what came back:
    python benchmarks/bench_e2e.py --phase score --results DIR --subject .carry/anchor \
        --wavs ../shared/data --out out/e2e/score

``--tiny`` runs both phases with the CPU presets on a few frames (a smoke test of this script).
Every metric is computed by synctalk/evaluate/run.py's functions (ground truth, image metrics, LMD, sync).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synctalk.errors import InputError, SyncTalkError  # noqa: E402
from synctalk.log import get_logger, setup_logging  # noqa: E402

log = get_logger("bench.e2e")

# Test-split modes: name -> (torso model, portrait paste-back, what it is).
MODES: dict[str, tuple[bool, bool, str]] = {
    "head": (False, False, "w/o portrait: head over the GT torso"),
    "portrait": (False, True, "portrait: face pasted into the GT frame"),
    "torso": (True, False, "full: head over the trained torso"),
    "torso+portrait": (True, True, "full + portrait"),
}
DRIVE_MODE = "torso+portrait"      # what `synctalk run` writes by default
VOLUME_BYTES = int(14.5 * 2**20)   # each returned file stays under the 16 MiB limit
# The device returns <= 8 files and <= 64 MiB in all: 4 archives (58 MiB) + bench_gpu.json + the audio
# features (features_f16.npy, 1.8 MB for 71 s) + the log. (Six 15.5-MiB archives lost the last one to the
# 64-MiB total in the first run.)
MAX_VOLUMES = 4
JPEG_QUALITY = 92
FEATURES_RETURNED = "features_f16.npy"
TRAIN_PROBE = 162                  # training frames rendered for the mouth-motion comparison (= the test split)
PROCESS_START = time.perf_counter()


# ----------------------------------------------------------------------------------------------- GPU phase
def read_pngs(folder: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for p in sorted(folder.glob("frame_*.png"))]


class Stages:
    """Wall time and peak CUDA memory per stage, written to ``bench_gpu.json`` after every stage so a run
    that hits the time limit still reports what it finished."""

    def __init__(self, out: Path, facts: dict):
        # The clock starts when Python started this script: imports count against the 10-minute limit.
        self.out, self.facts, self.started = out, facts, PROCESS_START
        facts.setdefault("stages", {})

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, name: str, fn, *args, **kwargs):
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        log.info("== %s (t = %.0f s) ==", name, self.elapsed())
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        entry = {"seconds": time.perf_counter() - t0}
        if cuda:
            entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.facts["stages"][name] = entry
        self.save()
        return result, entry

    def save(self) -> None:
        from synctalk.io.atomic import write_json

        self.facts["elapsed_seconds"] = self.elapsed()
        write_json(self.out / "bench_gpu.json", self.facts)


def gpu_phase(args: argparse.Namespace) -> None:
    import torch

    from synctalk import subject as S
    from synctalk.audio.features import AVE_WEIGHTS, FEATURES, build_subject_audio
    from synctalk.audio.load import load_driving_audio
    from synctalk.e2e import audio_config, fit_sync_check_to_split, train_configs
    from synctalk.evaluate.run import EvaluateOptions, ground_truth, image_metrics, render_test_mode
    from synctalk.nerf.train_run import train_subject
    from synctalk.render import RenderOptions, render_audio
    from synctalk.torso.run import train_torso

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wavs = sorted(Path(args.wavs).glob("*.wav"))
    for wav in wavs:  # every clip must decode here, checked before minutes of training
        load_driving_audio(wav)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_e2e_"))
    root = work / "subject"
    if root.exists():
        shutil.rmtree(root)
    # A private copy: the carried subject stays untouched (the audio stage rewrites audio/).
    shutil.copytree(args.subject, root, ignore=shutil.ignore_patterns("workspace", "renders"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset_name = "tiny" if args.tiny else "fast"
    overrides = list(args.set)
    if args.max_frames:
        overrides.append(f"max_frames={args.max_frames}")
    cfg, torso_cfg = train_configs(preset_name, overrides, "auto")
    facts: dict = {"machine": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "preset": preset_name, "overrides": overrides, "subject": str(args.subject),
                   "command": " ".join(sys.argv)}
    stages = Stages(out, facts)

    sub = S.Subject(root)
    if args.audio == "train":
        (root / FEATURES).unlink(missing_ok=True)
        audio_cfg = fit_sync_check_to_split(audio_config("tiny" if args.tiny else "default", overrides),
                                            sub.n_frames - sub.split.n_train)
        audio, entry = stages.run("audio", build_subject_audio, root, audio_cfg)
        entry.update(audio)
        # What the NeRF is fed, for the score phase's "what the audio carries about the mouth" table.
        np.save(out / FEATURES_RETURNED, np.load(root / FEATURES).astype(np.float16))
    else:  # reuse the carried features with the encoder weights that made them
        if not args.ave:
            raise InputError("--audio reuse needs --ave PATH (the ave.safetensors that made audio/features.npy)")
        shutil.copy(args.ave, root / AVE_WEIGHTS)
        facts["stages"]["audio"] = {"seconds": 0.0, "reused": str(args.ave)}
    head, entry = stages.run("head+lips", train_subject, root, cfg, ("head", "lips"))
    entry.update({"train_seconds": {k: v["seconds"] for k, v in head["stages"].items()},
                  "test_psnr": head["test"]["psnr"], "test_psnr_head": head["test"]["psnr_head"]})
    if not args.no_torso:
        torso, entry = stages.run("torso", train_torso, root, torso_cfg)
        entry.update({"train_seconds": torso["train"]["seconds"], "test_psnr": torso["test"]["psnr"],
                      "test_psnr_head_over_gt_torso": torso["test"]["psnr_head_over_gt_torso"]})
    modes = {m: v for m, v in MODES.items() if not (args.no_torso and v[0])}
    drive_mode = "portrait" if args.no_torso else DRIVE_MODE
    crop = face_crop(sub, args.drive_crop) if args.drive_crop else None

    staging = work / "jpeg"
    ids = np.arange(sub.split.n_train, sub.n_frames)
    facts.update({"test_ids": [int(ids[0]), int(ids[-1]) + 1], "modes": {}, "drive": {},
                  "drive_mode": drive_mode, "drive_crop": list(crop) if crop else None})
    # The evaluate module's own steps (synctalk/evaluate/run.py), minus its lossless PNGs, which are too
    # large to bring back: render each mode in memory, score it against the same ground truth.
    eval_options = EvaluateOptions(device=device)
    targets = None
    for mode, (_, portrait, _) in modes.items():
        if stages.elapsed() > args.deadline:
            facts["modes"][mode] = {"skipped": f"past the {args.deadline:.0f}-s deadline"}
            continue
        preds, entry = stages.run(f"test render {mode}", render_test_mode, root, None, mode, ids, eval_options)
        if targets is None:
            targets = ground_truth(sub, ids, preds.shape[1:3])
        metrics = image_metrics(preds, targets["frame" if portrait else "plate"], eval_options)
        # A metric that could not run is {"unavailable": reason}: keep the reason, not a number.
        facts["modes"][mode] = {**{k: (v if isinstance(v, float) and math.isfinite(v) else None)
                                   for k, v in metrics.items()},
                                "unavailable": {k: v["unavailable"] for k, v in metrics.items() if isinstance(v, dict)},
                                "frames": len(preds), "size": list(preds.shape[1:3]),
                                "render_seconds": entry["seconds"]}
        log.info("%s: PSNR %.2f dB, SSIM %.4f, perceptual %s", mode, metrics["psnr"], metrics["ssim"],
                 metrics.get("perceptual_hedvgg"))
        if crop is None:
            to_jpeg(preds, staging / f"test_{mode}")
        stages.save()
    # The head render of the last TRAIN_PROBE training frames (seen in training): its mouth motion beside
    # the test split's tells a memorised audio path (follows the real mouth on train, not on test) from
    # one the field does not use at all (follows it on neither).
    probe = np.arange(max(0, sub.split.n_train - TRAIN_PROBE), sub.split.n_train)
    if crop is None and probe.size and stages.elapsed() <= args.deadline:
        preds, entry = stages.run("train-frame render head", render_test_mode, root, None, "head", probe, eval_options)
        facts["train_probe"] = {"ids": [int(probe[0]), int(probe[-1]) + 1], "frames": len(preds),
                                "render_seconds": entry["seconds"]}
        to_jpeg(preds, staging / "train_head")
        stages.save()

    for wav in wavs:
        if stages.elapsed() > args.deadline:
            facts["drive"][wav.stem] = {"skipped": f"past the {args.deadline:.0f}-s deadline"}
            continue
        frames_dir = work / "png" / f"drive_{wav.stem}"
        shutil.rmtree(frames_dir, ignore_errors=True)
        audio_path = wav if not args.max_audio_seconds else _clip_audio(wav, args.max_audio_seconds, work)
        info, entry = stages.run(f"drive {wav.stem}", render_audio, root, audio_path, None, RenderOptions(
            torso=MODES[drive_mode][0], portrait=MODES[drive_mode][1], frames_dir=frames_dir, device=device,
            silence=args.drive_silence))
        facts["drive"][wav.stem] = {"frames": info["frames"], "audio_seconds": info["audio_seconds"],
                                    "fps": info["fps"], "render_seconds": info["render_seconds"],
                                    "setup_seconds": info["setup_seconds"], "mode": info["mode"],
                                    "silence": info.get("silence"), "peak_gib": entry.get("peak_gib")}
        frames = read_pngs(frames_dir)
        if crop is not None and frames:
            k = frames[0].shape[0] / sub.size[0]   # the render may be smaller than the subject (tiny)
            y0, x0, size = (int(round(v * k)) for v in crop)
            frames = [f[y0:y0 + size, x0:x0 + size] for f in frames]
        to_jpeg(frames, staging / f"drive_{wav.stem}")
        shutil.rmtree(frames_dir)
        stages.save()
    facts["archives"] = pack_volumes(staging, out)
    stages.save()
    log.info("GPU phase done in %.0f s; %d archives in %s", stages.elapsed(), len(facts["archives"]), out)


def face_crop(sub, size: int) -> tuple[int, int, int]:
    """(y0, x0, size) in subject pixels: a square of ``size`` px centred on the parsed face of the first frame."""
    from synctalk import subject as S
    from synctalk.prepare.maskcodec import MaskReader

    with MaskReader(sub.path(S.PARSING)) as reader:
        labels = reader[0]
    ys, xs = np.nonzero(labels == S.LABEL_FACE)
    h, w = labels.shape
    size = min(size, h, w)
    y0 = int(np.clip((ys.min() + ys.max()) // 2 - size // 2, 0, h - size))
    x0 = int(np.clip((xs.min() + xs.max()) // 2 - size // 2, 0, w - size))
    return y0, x0, size


def write_pcm16k(path: Path, samples: np.ndarray) -> Path:
    from synctalk.io.audio import write_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, samples, 16000)
    return path


def _clip_audio(wav: Path, seconds: float, work: Path) -> Path:
    """The first ``seconds`` of ``wav`` as 16-kHz PCM (smoke runs)."""
    from synctalk.audio.load import load_driving_audio

    return write_pcm16k(work / "audio_clips" / wav.name, load_driving_audio(wav)[: int(seconds * 16000)])


def convert_phase(args: argparse.Namespace) -> None:
    """--wavs -> --out as 16-kHz mono PCM WAVs: exactly what the renderer's loader makes of them, readable
    without PyAV (the GPU machine decodes only 16-kHz WAVs itself)."""
    from synctalk.audio.load import load_driving_audio

    for wav in sorted(Path(args.wavs).glob("*.wav")):
        path = write_pcm16k(Path(args.out) / wav.name, load_driving_audio(wav))
        log.info("%s -> %s", wav, path)


def to_jpeg(frames, folder: Path, quality: int = JPEG_QUALITY) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise SyncTalkError(f"JPEG encoding failed for {folder.name} frame {i}")
        (folder / f"frame_{i:05d}.jpg").write_bytes(buf.tobytes())


def pack_volumes(staging: Path, out: Path) -> list[str]:
    """Every staged JPEG into at most MAX_VOLUMES tar files under VOLUME_BYTES each, in order; frames are
    re-encoded at a lower quality until they fit (a long run may not fit at the first quality)."""
    import cv2

    files = sorted(p for p in staging.rglob("*.jpg"))
    quality = JPEG_QUALITY
    while True:
        volumes: list[list[Path]] = [[]]
        used = 0
        for f in files:
            size = f.stat().st_size + 1024  # tar header and padding
            if used + size > VOLUME_BYTES and volumes[-1]:
                volumes.append([])
                used = 0
            volumes[-1].append(f)
            used += size
        if len(volumes) <= MAX_VOLUMES:
            break
        quality -= 8
        if quality < 50:
            raise SyncTalkError(f"{len(files)} frames do not fit in {MAX_VOLUMES} archives even at JPEG 50")
        log.info("frames do not fit in %d archives; re-encoding at JPEG quality %d", MAX_VOLUMES, quality)
        for f in files:
            img = cv2.imdecode(np.frombuffer(f.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            f.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    names = []
    for k, members in enumerate(volumes):
        name = f"frames_{k}.tar"
        with tarfile.open(out / name, "w") as tar:
            for f in members:
                tar.add(f, arcname=str(f.relative_to(staging)))
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", required=True, choices=("gpu", "score", "convert"),
                   help="convert: --wavs to 16-kHz mono WAVs in --out, for a machine without PyAV")
    p.add_argument("--subject", help="the prepared subject (.carry/anchor)")
    p.add_argument("--out", required=True, help="gpu: folder for the returned files; score: folder for the report")
    p.add_argument("--wavs", required=True, help="folder of driving clips (*.wav)")
    p.add_argument("--tiny", action="store_true", help="CPU presets (smoke test of this script)")
    # gpu phase
    p.add_argument("--work", help="gpu: scratch folder (default: a new temp folder)")
    p.add_argument("--audio", choices=("train", "reuse"), default="train",
                   help="gpu: train the audio encoder (default) or reuse the subject's features with --ave")
    p.add_argument("--ave", help="gpu: ave.safetensors that made the subject's audio/features.npy (--audio reuse)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="gpu: training override, as `synctalk train --set` (torso.FIELD for the torso)")
    p.add_argument("--max-frames", type=int, default=None, help="gpu: train on the first N frames only")
    p.add_argument("--no-torso", action="store_true",
                   help="gpu: skip the torso stage and its modes; driving clips in head+portrait (sweeps)")
    p.add_argument("--drive-crop", type=int, default=0, metavar="PX",
                   help="gpu: return only a PX-square crop around the face of each driving-clip frame and no "
                        "test frames (enough for av_sync; several variants then fit in one return)")
    p.add_argument("--max-audio-seconds", type=float, default=None, help="gpu: cut the driving clips (smoke)")
    p.add_argument("--drive-silence", choices=("closed", "natural"), default="closed",
                   help="gpu: RenderOptions.silence of the driving clips. closed needs silero-vad on the machine "
                        "(the GPU machine has none: carry the unpacked silero_vad package, e.g. .carry/silero, and "
                        "put it on PYTHONPATH); without it the render falls back to natural and the facts say so")
    p.add_argument("--deadline", type=float, default=540.0,
                   help="gpu: seconds after which no further driving clip is started (default 540)")
    # score phase
    p.add_argument("--results", help="score: the files the gpu phase wrote")
    p.add_argument("--lmd-frames", type=int, default=None, help="score: LMD on N evenly spaced test frames")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        if args.phase == "convert":
            convert_phase(args)
        elif not args.subject:
            raise InputError("--subject DIR is needed (the prepared subject)")
        elif args.phase == "gpu":
            gpu_phase(args)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_e2e_score import score_phase

            if not args.results:
                raise InputError("--phase score needs --results DIR (what the gpu phase wrote)")
            score_phase(args)
    except SyncTalkError as e:
        print(f"bench_e2e: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
