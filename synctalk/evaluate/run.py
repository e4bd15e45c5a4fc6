"""``evaluate_subject``: a trained subject on its test split, in every compositing mode, plus cross-driven clips.

Modes (``EvaluateOptions.modes``; ``torso`` modes only when a torso model exists):
  head            head over the ground-truth torso.mp4 frame (the original's "w/o portrait")
  portrait        head pasted into the original frame (the original's "Portrait"; mostly GT pixels)
  torso           head over the trained torso over the plate (nothing from the test frame but its pose)
  torso+portrait  the torso render pasted into the original frame
Ground truth: the frame with its background replaced by the plate (what the head is trained on) for
``head``/``torso``, the original frame for the portrait modes (as the original's evaluation).

Two-machine design: dlib (LMD) and mediapipe/PyAV (av_sync) are absent on the GPU machine, which has
the renderer's speed. Every mode's renders are saved losslessly as ``OUT/frames/<mode>/frame_%05d.png``;
``reuse_frames=True`` (``--reuse-frames``) loads them instead of rendering, so: render + GPU-side
metrics on the GPU machine, bring ``OUT/frames`` back, re-run with ``--reuse-frames`` on a CPU machine
with dlib/mediapipe for the rest. A metric that cannot run is reported as ``{"unavailable": reason}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk import subject as S
from synctalk.errors import InputError, MissingWeightsError
from synctalk.io.atomic import write_json, write_text
from synctalk.log import get_logger, progress

log = get_logger("evaluate")

MODES = ("head", "portrait", "torso", "torso+portrait")


@dataclass
class EvaluateOptions:
    modes: tuple[str, ...] = MODES
    lpips_weights: str | None = None     # torchvision AlexNet .pth (+ LPIPS heads): enables LPIPS-alex
    syncnet_weights: str | None = None   # SyncNet weights: enables LSE-C/D
    device: str = "auto"
    batch: int = 8
    reuse_frames: bool = False
    video: bool = True                   # side-by-side GT | render | difference MP4 per mode
    max_frames: int | None = None        # evaluate only the first N test frames (quick checks)
    gt_halo_px: int = 0                  # composite_gt's halo for the plate ground truth (0 = the original's)


def _unavailable(e: Exception) -> dict:
    return {"unavailable": str(e).splitlines()[0] if str(e) else type(e).__name__}


def _read_pngs(folder: Path, count: int) -> np.ndarray | None:
    import cv2

    paths = [folder / f"frame_{i:05d}.png" for i in range(count)]
    if not all(p.is_file() for p in paths):
        return None
    return np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])


def _write_pngs(folder: Path, frames: np.ndarray) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        ok, data = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError("PNG encoding failed")
        (folder / f"frame_{i:05d}.png").write_bytes(data.tobytes())


def ground_truth(sub: S.Subject, ids: np.ndarray, size: tuple[int, int], halo_px: int = 0) -> dict[str, np.ndarray]:
    """{"plate": frames with the plate as background, "frame": original frames} at the render size;
    ``halo_px`` is ``composite_gt``'s (the frame's colour kept that far around the head)."""
    import cv2

    from synctalk.io.video import iter_frames
    from synctalk.prepare.background import composite_gt, load_plate
    from synctalk.prepare.maskcodec import MaskReader

    plate = load_plate(sub.path(S.BACKGROUND))
    wanted = set(int(i) for i in ids)
    originals, plated = [], []
    with MaskReader(sub.path(S.PARSING)) as labels:
        for i, frame in enumerate(iter_frames(sub.path(S.FRAMES), 0, int(ids.max()) + 1)):
            if i in wanted:
                with_plate = composite_gt(frame, labels[i], plate, halo_px)
                if frame.shape[:2] != size:
                    frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                    with_plate = cv2.resize(with_plate, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                originals.append(frame)
                plated.append(with_plate)
    return {"frame": np.stack(originals), "plate": np.stack(plated)}


def render_test_mode(subject_root: Path, workspace: Path | None, mode: str, ids: np.ndarray,
                     options: EvaluateOptions) -> np.ndarray:
    import torch

    from synctalk.nerf.data import load_audio_features
    from synctalk.render.api import to_uint8
    from synctalk.render.session import RenderSession

    session = RenderSession(subject_root, workspace, options.device, torso="torso" in mode,
                            portrait="portrait" in mode)
    session.load_frames(ids)
    dev = session.device
    features = torch.from_numpy(load_audio_features(session.subject, session.subject.n_frames)).to(dev)
    out = []
    for start in progress(range(0, len(ids), options.batch), desc=f"render {mode}",
                          total=(len(ids) + options.batch - 1) // options.batch, unit="batch"):
        b = torch.from_numpy(ids[start:start + options.batch]).to(dev)
        c2w = torch.from_numpy(session.c2w_nerf[ids[start:start + options.batch]]).to(dev)
        exp = torch.from_numpy(session.expressions[ids[start:start + options.batch]]).to(dev)
        frames = session.render_batch(b, c2w, exp, session.engine.audio_codes(features, b))["frame"]
        out.append(to_uint8(frames))
    return np.concatenate(out)


def image_metrics(pred: np.ndarray, gt: np.ndarray, options: EvaluateOptions) -> dict:
    """PSNR, SSIM, the offline HED-VGG perceptual score and (with weights) LPIPS-alex; mean over frames."""
    import torch

    from synctalk.metrics.image import psnr, ssim, to_image_batch
    from synctalk.nerf.trainer import resolve_device

    device = resolve_device(options.device)
    result: dict = {}
    values: dict[str, list[float]] = {"psnr": [], "ssim": []}
    scorers: dict = {}
    try:
        from synctalk.metrics.perceptual import OfflinePerceptual

        scorers["perceptual_hedvgg"] = OfflinePerceptual().to(device).eval()
    except (MissingWeightsError, InputError, OSError) as e:
        result["perceptual_hedvgg"] = _unavailable(e)
    if options.lpips_weights:
        from synctalk.metrics.perceptual import LpipsAlex

        scorers["lpips_alex"] = LpipsAlex(options.lpips_weights).to(device).eval()
    else:
        result["lpips_alex"] = {"unavailable": "no --lpips-weights given"}
    for name in scorers:
        values[name] = []
    with torch.no_grad():
        for start in range(0, len(pred), 8):
            p = to_image_batch(pred[start:start + 8], device)
            g = to_image_batch(gt[start:start + 8], device)
            values["psnr"] += psnr(p, g).tolist()
            values["ssim"] += ssim(p, g).tolist()
            for name, scorer in scorers.items():
                values[name] += scorer(p, g).float().reshape(-1).tolist()
    for name, vals in values.items():
        finite = [v for v in vals if math.isfinite(v)]
        result[name] = float(np.mean(finite)) if finite else float("nan")
    return result


def lmd_metric(pred: np.ndarray, gt: np.ndarray) -> dict:
    from synctalk.metrics.lmd import Landmarks68, evaluate_lmd

    try:
        landmarker = Landmarks68()
    except MissingWeightsError as e:
        return _unavailable(e)
    r = evaluate_lmd(iter(pred), iter(gt), landmarker, total=len(pred))
    # render_faces_found guards the LMD: a shared-box fit scores a few px even on a render with no face.
    return {"lmd": r.lmd, "missing": r.missing, "render_faces_found": r.pred_faces}


def write_video(path: Path, frames, audio: np.ndarray | None) -> None:
    from synctalk.render.output import open_mp4

    with open_mp4(path, 25.0, audio, 16000) as writer:
        for frame in frames:
            writer.write(frame)


def sync_metrics(video: Path, syncnet_weights: str | None, device: str, gt_lms: np.ndarray | None = None) -> dict:
    """av_sync (face mesh + speech-band audio energy) and, with weights, SyncNet LSE-C/D of an MP4 with audio;
    with the ground truth's face-mesh landmarks of the same frames, ``mouth_motion`` too (one face-mesh pass)."""
    out: dict = {}
    try:
        from synctalk.audio.av_sync import load_talking_video, score_sync

        lms, wav = load_talking_video(video)
        score = score_sync(lms, wav).to_json()
        score.pop("correlations", None)
        out["av_sync"] = score
        if gt_lms is not None:
            from synctalk.metrics.mouth_motion import mouth_motion

            try:
                out["mouth_motion"] = mouth_motion(lms, gt_lms)
            except InputError as e:
                out["mouth_motion"] = _unavailable(e)
    except (ImportError, MissingWeightsError, InputError, OSError) as e:
        out["av_sync"] = _unavailable(e)
    if syncnet_weights:
        try:
            from synctalk.audio.syncnet_lse import score_video_lse

            lse = score_video_lse(video, syncnet_weights, device="cuda" if device == "cuda" else "cpu").to_json()
            out["lse"] = {"lse_c": lse["lse_c"], "lse_d": lse["lse_d"], "offset": lse["offset"]}
        except (ImportError, MissingWeightsError, InputError, OSError) as e:
            out["lse"] = _unavailable(e)
    return out


def _available_modes(workspace: Path, wanted: tuple[str, ...]) -> list[str]:
    bad = [m for m in wanted if m not in MODES]
    if bad:
        raise InputError(f"unknown evaluation mode(s) {bad}; modes are {', '.join(MODES)}")
    has_torso = (workspace / "torso_model.json").is_file()
    skipped = [m for m in wanted if "torso" in m and not has_torso]
    if skipped:
        log.info("no torso model in %s: skipping %s", workspace, ", ".join(skipped))
    return [m for m in wanted if "torso" not in m or has_torso]


def evaluate_subject(subject_root: str | Path, audios: tuple[str | Path, ...] = (), out_dir: str | Path | None = None,
                     workspace: str | Path | None = None, options: EvaluateOptions | None = None) -> dict:
    """Test-split metrics per mode + cross-driven sync scores; writes OUT/metrics.json, OUT/metrics.txt,
    OUT/frames/<mode>/, OUT/compare_<mode>.mp4 and OUT/cross_<name>.mp4. Returns the JSON-able result."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.compose.comparison import side_by_side
    from synctalk.render.model import default_workspace, load_head_model
    from synctalk.render.output import mp4_backend

    options = options or EvaluateOptions()
    root = Path(subject_root)
    sub = S.Subject(root)
    ws = Path(workspace) if workspace is not None else default_workspace(root)
    out = Path(out_dir) if out_dir is not None else root / "workspace" / "eval"
    out.mkdir(parents=True, exist_ok=True)
    size = load_head_model(ws, "cpu").size   # fails early (one line) when there is no model
    ids = np.arange(sub.split.n_train, sub.n_frames, dtype=np.int64)
    if options.max_frames is not None:
        ids = ids[: options.max_frames]
    if ids.size == 0:
        raise InputError(f"{root} has an empty test split")
    gts = ground_truth(sub, ids, size, options.gt_halo_px)
    gt_lms = sub.landmarks()[ids] if sub.path(S.LANDMARKS).is_file() else None   # for mouth_motion
    wav = load_driving_audio(sub.path(S.AUDIO), allow_silent=True)
    test_audio = wav[ids[0] * 640:(ids[-1] + 1) * 640]
    can_write = mp4_backend() is not None
    result: dict = {"subject": str(root), "workspace": str(ws), "test_frames": [int(ids[0]), int(ids[-1]) + 1],
                    "size": list(size), "modes": {}, "cross_driven": {}}
    for mode in _available_modes(ws, tuple(options.modes)):
        folder = out / "frames" / mode.replace("+", "_")
        frames = _read_pngs(folder, len(ids)) if options.reuse_frames else None
        if frames is None:
            if options.reuse_frames:
                log.info("no saved %s frames in %s; rendering them", mode, folder)
            frames = render_test_mode(root, ws, mode, ids, options)
            _write_pngs(folder, frames)
        gt = gts["frame"] if "portrait" in mode else gts["plate"]
        metrics = image_metrics(frames, gt, options)
        lmd = lmd_metric(frames, gt)
        metrics["lmd"] = lmd.get("lmd", lmd)
        if "render_faces_found" in lmd:
            metrics["render_faces_found"] = lmd["render_faces_found"]
        if can_write:
            video = out / f"test_{mode.replace('+', '_')}.mp4"
            write_video(video, frames, test_audio)
            metrics.update(sync_metrics(video, options.syncnet_weights, options.device, gt_lms))
            if options.video:
                write_video(out / f"compare_{mode.replace('+', '_')}.mp4",
                            (side_by_side(g, p) for g, p in zip(gt, frames)), test_audio)
        else:
            metrics["av_sync"] = {"unavailable": "no MP4 writer here (PyAV or ffmpeg)"}
        result["modes"][mode] = metrics
        log.info("%s: PSNR %.2f dB, SSIM %.4f", mode, metrics["psnr"], metrics["ssim"])
    for audio in audios:
        from synctalk.render.api import RenderOptions, render_audio

        name = Path(audio).stem
        if not can_write:
            result["cross_driven"][name] = {"unavailable": "no MP4 writer here (PyAV or ffmpeg)"}
            continue
        video = out / f"cross_{name}.mp4"
        info = render_audio(root, audio, video, RenderOptions(device=options.device, batch=options.batch),
                            workspace=ws)
        result["cross_driven"][name] = {"frames": info["frames"],
                                        **sync_metrics(video, options.syncnet_weights, options.device)}
    result = _finite_or_none(result)
    write_json(out / "metrics.json", result)
    table = format_table(result)
    write_text(out / "metrics.txt", table + "\n")
    return result


def _finite_or_none(obj):
    """NaN/inf -> None so metrics.json stays strict JSON (a metric with no valid frame)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(value, digits: int) -> str:
    if value is None or isinstance(value, dict):
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def format_table(result: dict) -> str:
    """Plain-text table of the per-mode metrics and the cross-driven sync scores."""
    head = (f"{'mode':<16} {'PSNR':>7} {'SSIM':>7} {'HEDVGG':>7} {'LPIPS':>7} {'LMD':>6} {'faces':>6} "
            f"{'sync off':>8} {'sync r':>7} {'LSE-C':>6} {'LSE-D':>6} {'lip r':>6} {'lip sd':>6}")
    lines = [head, "-" * len(head)]

    def sync_cols(m: dict) -> str:
        av = m.get("av_sync", {})
        lse = m.get("lse", {})
        off = str(av["best_offset"]) if "best_offset" in av else "n/a"
        r = _fmt(av.get("peak_correlation", {}), 3)
        motion = m.get("mouth_motion", {})   # test split only: it needs the real mouth of the same frames
        return (f"{off:>8} {r:>7} {_fmt(lse.get('lse_c', {}), 2):>6} {_fmt(lse.get('lse_d', {}), 2):>6} "
                f"{_fmt(motion.get('r', {}), 2):>6} {_fmt(motion.get('std_ratio', {}), 2):>6}")

    for mode, m in result["modes"].items():
        lines.append(f"{mode:<16} {_fmt(m['psnr'], 2):>7} {_fmt(m['ssim'], 4):>7} "
                     f"{_fmt(m.get('perceptual_hedvgg', {}), 4):>7} {_fmt(m.get('lpips_alex', {}), 4):>7} "
                     f"{_fmt(m.get('lmd', {}), 3):>6} {str(m.get('render_faces_found', 'n/a')):>6} {sync_cols(m)}")
    for name, m in result["cross_driven"].items():
        lines.append(f"{('audio ' + name)[:16]:<16} {'':>7} {'':>7} {'':>7} {'':>7} {'':>6} {'':>6} {sync_cols(m)}")
    return "\n".join(lines)
