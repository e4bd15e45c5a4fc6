"""Score phase of benchmarks/bench_e2e.py (CPU machine: dlib, mediapipe and PyAV are here).

Reads what the GPU phase returned (``bench_gpu.json`` + ``frames_*.tar``), adds LMD (dlib 68, mouth
points, synctalk.metrics.lmd) and av_sync (face-mesh outer-lip height vs 800-3000 Hz audio energy,
synctalk.audio.av_sync) per test-split mode and per driving clip, and writes:

  results.json / results.md   the tables (markdown printed too; docs/results.md embeds results.md)
  contact_sheet.png           test frames: ground truth next to every render mode
  drive_<clip>.png            evenly spaced frames of each driving clip
  videos/*.mp4                the test split per mode and the driving clips, with their audio
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
from pathlib import Path

import numpy as np

from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("bench.e2e.score")

# Issue 6 targets.
TARGET_PSNR_HEAD = 33.0
TARGET_PSNR_PORTRAIT = 36.0
TARGET_LMD = 3.0
TARGET_OFFSET = 2
TARGET_SILENT_CLOSED = 0.90
TARGET_SECONDS = 600.0
TILE = 256


def unpack(results: Path, dest: Path) -> None:
    archives = sorted(results.glob("frames_*.tar"))
    if not archives:
        raise InputError(f"no frames_*.tar in {results}; was the gpu phase finished?")
    for archive in archives:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if not member.isfile() or member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise InputError(f"{archive.name} holds an unexpected entry {member.name!r}")
            tar.extractall(dest)


def read_jpegs(folder: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for p in sorted(folder.glob("frame_*.jpg"))]


def evenly(n: int, count: int | None) -> list[int]:
    if count is None or n <= count:
        return list(range(n))
    return sorted({int(round(k)) for k in np.linspace(0, n - 1, count)})


def sync_of(video: Path, gt_lms: np.ndarray | None = None) -> dict:
    """av_sync of a talking MP4 (its own audio track), or {"unavailable": reason}; with the real mouth's
    landmarks of the same frames, its ``mouth_motion`` under that key too."""
    from synctalk.evaluate.run import sync_metrics

    scores = sync_metrics(video, None, "cpu", gt_lms)
    sync = dict(scores["av_sync"])
    if "mouth_motion" in scores:
        sync["mouth_motion"] = scores["mouth_motion"]
    return sync


def lmd_of(preds: np.ndarray, gts: np.ndarray) -> dict:
    """The evaluate module's LMD with how many renders the detector finds a face in (LMD fits the render's
    landmarks inside the ground truth's face box, so a render with no face still scores a few px)."""
    from synctalk.evaluate.run import lmd_metric

    out = lmd_metric(preds, gts)
    result = {"lmd": out.get("lmd"), "lmd_missing": out.get("missing"), "lmd_frames": len(preds),
              "render_faces_found": out.get("render_faces_found")}
    if "unavailable" in out:
        result["unavailable"] = {"lmd": out["unavailable"]}
    return result


def score_phase(args: argparse.Namespace) -> dict:
    from synctalk import subject as S
    from synctalk.audio.load import load_driving_audio
    from synctalk.evaluate.run import ground_truth, write_video
    from synctalk.io.atomic import write_json, write_text

    results, out = Path(args.results), Path(args.out)
    gpu = json.loads((results / "bench_gpu.json").read_text())
    frames_root = out / "frames"
    unpack(results, frames_root)
    root = Path(args.subject)
    sub = S.Subject(root)
    start, stop = gpu["test_ids"]
    ids = np.arange(start, stop)
    gt_by_size: dict[tuple[int, int], dict[str, np.ndarray]] = {}   # ground truth per render size
    test_wav = load_driving_audio(root / S.AUDIO)[start * 640:stop * 640]
    gt_lms = sub.landmarks()[start:stop]   # the real mouth of the test frames (mouth_motion)

    modes: dict[str, dict] = {}
    rendered: dict[str, list[np.ndarray]] = {}
    for mode, measured in gpu.get("modes", {}).items():
        preds = read_jpegs(frames_root / f"test_{mode}")
        if not preds:
            modes[mode] = measured
            continue
        rendered[mode] = preds
        size = preds[0].shape[:2]
        if size not in gt_by_size:
            gt_by_size[size] = ground_truth(sub, ids, size)
        gts = gt_by_size[size]["frame" if "portrait" in mode else "plate"]   # as evaluate_subject
        pick = evenly(len(preds), args.lmd_frames)
        log.info("scoring test split, mode %s (%d frames)", mode, len(preds))
        lmd = lmd_of(np.stack([preds[i] for i in pick]), gts[pick])
        video = out / "videos" / f"test_{mode}.mp4"
        write_video(video, preds, test_wav)
        unavailable = {**measured.get("unavailable", {}), **lmd.pop("unavailable", {})}
        modes[mode] = {**measured, **lmd, "unavailable": unavailable, "av_sync": sync_of(video, gt_lms)}
    train_probe = score_train_probe(gpu, sub, frames_root, out)
    gt_frames = next(iter(gt_by_size.values()))["frame"] if gt_by_size else ground_truth(sub, ids, sub.size)["frame"]
    write_video(out / "videos" / "test_ground_truth.mp4", gt_frames, test_wav)
    reference = sync_of(out / "videos" / "test_ground_truth.mp4")

    drive: dict[str, dict] = {}
    for clip, measured in gpu.get("drive", {}).items():
        frames = read_jpegs(frames_root / f"drive_{clip}")
        if not frames:
            drive[clip] = measured
            continue
        wav = load_driving_audio(Path(args.wavs) / f"{clip}.wav")[: len(frames) * 640]
        log.info("scoring driving clip %s (%d frames)", clip, len(frames))
        video = out / "videos" / f"drive_{clip}.mp4"
        write_video(video, frames, wav)
        drive[clip] = {**measured, "av_sync": sync_of(video)}
        strip(frames, out / f"drive_{clip}.png")
    if rendered:
        contact_sheet(list(gt_frames), rendered, out / "contact_sheet.png")
    curves = {"test frames, head": (out / "videos" / "test_head.mp4", gt_lms)}
    if train_probe:
        start, stop = train_probe["ids"]
        curves["training frames, head"] = (out / "videos" / "train_head.mp4", sub.landmarks()[start:stop])
    mouth_curves({k: v for k, v in curves.items() if v[0].is_file()}, out / "mouth_motion.png")

    report = {"gpu": {k: v for k, v in gpu.items() if k not in ("modes", "drive")}, "modes": modes,
              "ground_truth_av_sync": reference, "drive": drive, "train_probe": train_probe,
              "audio_carries": audio_carries(root, results / features_returned())}
    report["targets"] = targets(report)
    markdown = render_markdown(report)
    write_json(out / "results.json", report)
    write_text(out / "results.md", markdown)
    print(markdown)
    return report


def score_train_probe(gpu: dict, sub, frames_root: Path, out: Path) -> dict | None:
    """av_sync and mouth motion of the head render of training frames (bench_e2e's TRAIN_PROBE), if returned."""
    from synctalk import subject as S
    from synctalk.audio.load import load_driving_audio
    from synctalk.evaluate.run import write_video

    probe = gpu.get("train_probe")
    frames = read_jpegs(frames_root / "train_head") if probe else []
    if not frames:
        return None
    start, stop = probe["ids"]
    wav = load_driving_audio(sub.root / S.AUDIO)[start * 640:stop * 640]
    video = out / "videos" / "train_head.mp4"
    write_video(video, frames, wav)
    log.info("scoring the head render of training frames %d-%d", start, stop - 1)
    return {**probe, "av_sync": sync_of(video, sub.landmarks()[start:stop])}


def features_returned() -> str:
    from bench_e2e import FEATURES_RETURNED

    return FEATURES_RETURNED


def audio_carries(root: Path, features_path: Path) -> list[dict]:
    """How well the real test mouth is predicted from the audio alone (bench_audio_lip_baseline: ridge to
    the real lip height, fitted on train), from the mel windows and, when the run returned them, from the
    audio features the NeRF was fed: the reference for the renders' mouth-motion r."""
    from bench_audio_lip_baseline import baseline_rows

    features = np.load(features_path, allow_pickle=False) if features_path.is_file() else None
    return [{"input": name, **r} for name, r in baseline_rows(root, (64,), features=features)]


# ------------------------------------------------------------------------------------------------ pictures
def _tile(frame: np.ndarray, label: str) -> np.ndarray:
    import cv2

    tile = cv2.resize(frame, (TILE, TILE), interpolation=cv2.INTER_AREA if frame.shape[0] > TILE else cv2.INTER_CUBIC)
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _save_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    from synctalk.io.atomic import write_bytes

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise InputError(f"cannot encode {path.name}")
    write_bytes(path, buf.tobytes())


def contact_sheet(gts: list[np.ndarray], rendered: dict[str, list[np.ndarray]], path: Path, rows: int = 4) -> None:
    """Rows = evenly spaced test frames; columns = ground truth, then each render mode."""
    n = min(len(gts), *(len(v) for v in rendered.values()))
    lines = []
    for i in evenly(n, rows):
        tiles = [_tile(gts[i], f"ground truth, test frame {i}")] + [_tile(v[i], mode) for mode, v in rendered.items()]
        lines.append(np.concatenate(tiles, axis=1))
    _save_png(path, np.concatenate(lines, axis=0))


def mouth_curves(videos: dict[str, tuple[Path, np.ndarray]], path: Path) -> None:
    """One panel per video: the rendered outer-lip height against the real mouth's over the same frames."""
    if not videos:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synctalk.audio.mouth import face_mesh_landmarks, lip_height

    fig, axes = plt.subplots(len(videos), 1, figsize=(10, 2.6 * len(videos)), squeeze=False)
    for ax, (name, (video, gt_lms)) in zip(axes[:, 0], videos.items()):
        lms, _, _ = face_mesh_landmarks(video)
        real, ours = lip_height(gt_lms), lip_height(lms)
        r = float(np.corrcoef(real, ours)[0, 1]) if ours.std() > 0 else float("nan")
        ax.plot(real, color="black", lw=1.2, label="real mouth")
        ax.plot(ours, color="tab:red", lw=1.2, label="render")
        ax.set_title(f"{name}: outer-lip height / face height (r = {r:.2f}, spread ratio {ours.std() / real.std():.2f})",
                     fontsize=9)
        ax.set_xlabel("frame (25 fps)", fontsize=8)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def strip(frames: list[np.ndarray], path: Path, count: int = 6) -> None:
    _save_png(path, np.concatenate([_tile(frames[i], f"frame {i}") for i in evenly(len(frames), count)], axis=1))


# ------------------------------------------------------------------------------------------------- tables
def _f(value, fmt: str = ".2f", unit: str = "") -> str:
    return f"{value:{fmt}}{unit}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _silence_cell(silence: dict | None) -> str:
    """How the render treated the pauses (synctalk.render.silence); runs before it existed: natural."""
    if not silence:
        return "natural"
    rest = silence.get("rest")
    if silence.get("mode") == "closed" and rest:
        return f"closed: {silence['silent_frames']} frames, rest frame {rest['frame']}"
    return silence.get("mode", "natural") + (f" ({silence['reason']})" if silence.get("reason") else "")


def _sync_cells(sync: dict | None, name: str, notes: list[str]) -> list[str]:
    if not sync or "unavailable" in sync:
        if sync:
            notes.append(f"av_sync n/a for {name}: {sync['unavailable']}")
        return ["n/a", "n/a", "n/a"]
    closed = sync["silent_frames_closed"]
    return [f"{sync['best_offset']:+d}", _f(sync["peak_correlation"]),
            f"{100 * closed:.0f} % of {sync['silent_frames']}" if closed is not None else "no silence"]


def _motion_cell(motion: dict | None) -> str:
    """Lip-height correlation with the real mouth of the same frames, and the render's spread over the real one."""
    if not motion or "unavailable" in motion:
        return "n/a"
    return f"{_f(motion.get('r'))} ({_f(motion.get('std_ratio'))})"


def targets(report: dict) -> dict[str, bool | None]:
    modes, drive, gpu = report["modes"], report["drive"], report["gpu"]

    def at_least(mode: str, key: str, bound: float) -> bool | None:
        v = modes.get(mode, {}).get(key)
        return None if v is None else v >= bound

    head = modes.get("head", {})
    lmd, faces, scored = head.get("lmd"), head.get("render_faces_found"), head.get("lmd_frames")
    out: dict[str, bool | None] = {
        f"PSNR head over GT torso >= {TARGET_PSNR_HEAD:g} dB": at_least("head", "psnr", TARGET_PSNR_HEAD),
        f"PSNR portrait >= {TARGET_PSNR_PORTRAIT:g} dB": at_least("portrait", "psnr", TARGET_PSNR_PORTRAIT),
        # A faceless render still gets a small LMD (see lmd_of), so a face must be found in 90 % of them.
        f"LMD <= {TARGET_LMD:g} px (with a face found in >= 90 % of the renders)":
            None if lmd is None else lmd <= TARGET_LMD and faces >= 0.9 * scored,
    }
    for clip, d in drive.items():
        s = d.get("av_sync") or {}
        ok = None if not s or "unavailable" in s else (abs(s["best_offset"]) <= TARGET_OFFSET and (
            s["silent_frames_closed"] is None or s["silent_frames_closed"] >= TARGET_SILENT_CLOSED))
        out[f"{clip}: offset within +-{TARGET_OFFSET}, silent mouth closed >= {TARGET_SILENT_CLOSED:.0%}"] = ok
    elapsed = gpu.get("elapsed_seconds")
    out[f"GPU phase <= {TARGET_SECONDS:g} s"] = None if elapsed is None else elapsed <= TARGET_SECONDS
    return out


def render_markdown(report: dict) -> str:
    from bench_e2e import MODES  # the one list of modes and their descriptions

    gpu, modes, drive = report["gpu"], report["modes"], report["drive"]
    lines = [f"Machine: {gpu.get('machine')}, torch {gpu.get('torch')}, {gpu.get('date')}; preset "
             f"`{gpu.get('preset')}`{' ' + str(gpu['overrides']) if gpu.get('overrides') else ''}; "
             f"GPU phase {_f(gpu.get('elapsed_seconds'), '.0f')} s.", "",
             "**Test split** (self-driven, frames " + f"{gpu['test_ids'][0]}-{gpu['test_ids'][1] - 1}). PSNR/SSIM/"
             "perceptual on exact frames on the GPU; LMD (dlib, mouth) and av_sync on the returned JPEG frames; "
             "mouth motion = correlation of the rendered outer-lip height with the real one over the same frames "
             "(face mesh; synctalk.metrics.mouth_motion) and the render's spread over the real one's.",
             "", "| mode | PSNR (dB) | SSIM | LMD (px) | faces found (dlib) | perceptual_hedvgg | "
                 "av_sync offset | av_sync r | silent frames closed | mouth motion r (std ratio) | render FPS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for mode, m in modes.items():
        if "skipped" in m:
            lines.append(f"| {mode} | skipped: {m['skipped']} |" + " |" * 9)
            continue
        own = f"{m.get('render_faces_found', 'n/a')} of {m.get('lmd_frames', 'n/a')}"
        lines.append(f"| {MODES[mode][2] if mode in MODES else mode} | {_f(m.get('psnr'))} | {_f(m.get('ssim'), '.4f')} | "
                     f"{_f(m.get('lmd'))} | {own} | {_f(m.get('perceptual_hedvgg'), '.4f')} | "
                     + " | ".join(_sync_cells(m.get("av_sync"), f"test {mode}", notes))
                     + f" | {_motion_cell((m.get('av_sync') or {}).get('mouth_motion'))}"
                     + f" | {_f(m['frames'] / m['render_seconds'] if m.get('render_seconds') else None, '.1f')} |")
    probe = report.get("train_probe")
    if probe:
        lines.append(f"| head, training frames {probe['ids'][0]}-{probe['ids'][1] - 1} (seen in training) | - | - | - | - | - | "
                     + " | ".join(_sync_cells(probe.get("av_sync"), "training frames", notes))
                     + f" | {_motion_cell((probe.get('av_sync') or {}).get('mouth_motion'))} | - |")
    lines.append("| ground-truth video (reference) | - | - | - | - | - | "
                 + " | ".join(_sync_cells(report["ground_truth_av_sync"], "ground truth", notes)) + " | 1 (1) | - |")
    missing: dict[tuple[str, str], list[str]] = {}
    for mode, m in modes.items():
        for metric, reason in (m.get("unavailable") or {}).items():
            missing.setdefault((metric, reason), []).append(mode)
    notes += [f"{metric} n/a ({', '.join(ms)}): {reason}" for (metric, reason), ms in missing.items()]
    lines += ["", "Render FPS (test split) = frames / the whole in-memory render of the mode (model and frame "
                  "loading included).", "",
              "**Driving clips** (cross-driven, mode " + gpu.get("drive_mode", "torso+portrait") + "). FPS: render loop, and the whole render call "
              "(model and frame loading, audio features, PNG writing included).", "",
              "| clip | seconds | frames | FPS (loop) | FPS (whole call) | pauses (silence mode) | av_sync offset | "
              "av_sync r | silent frames closed |", "|---|---|---|---|---|---|---|---|---|"]
    for clip, d in drive.items():
        if "skipped" in d:
            lines.append(f"| {clip} | skipped: {d['skipped']} | | | | | | | |")
            continue
        loop = d["frames"] / d["render_seconds"] if d.get("render_seconds") else None
        lines.append(f"| {clip} | {_f(d.get('audio_seconds'), '.1f')} | {d.get('frames')} | {_f(loop, '.1f')} | "
                     f"{_f(d.get('fps'), '.1f')} | {_silence_cell(d.get('silence'))} | "
                     + " | ".join(_sync_cells(d.get("av_sync"), clip, notes)) + " |")
    if notes:
        lines += [""] + [f"* {note}" for note in notes]
    if report.get("audio_carries"):
        lines += ["", "**What the audio carries about the mouth** (ridge regression to the real outer-lip "
                      "height, fitted on the train frames; r on the test frames is the reference for the "
                      "renders' mouth-motion r; benchmarks/bench_audio_lip_baseline.py)", "",
                  "| audio input | r train | r test | std ratio test |", "|---|---:|---:|---:|"]
        lines += [f"| {row['input']} | {row['r_train']:.3f} | {row['r_test']:.3f} | {row['std_ratio_test']:.2f} |"
                  for row in report["audio_carries"]]
    lines += ["", "**Training and memory**", "", "| stage | wall (s) | peak GPU memory (GiB) | test PSNR (dB) |",
              "|---|---|---|---|"]
    for name, st in gpu.get("stages", {}).items():
        if name.startswith(("test render", "drive ", "train-frame render")):
            continue
        train = st.get("train_seconds")
        extra = f" (train steps {', '.join(f'{k} {v:.0f} s' for k, v in train.items())})" if isinstance(train, dict) else ""
        lines.append(f"| {name}{extra} | {_f(st.get('seconds'), '.1f')} | {_f(st.get('peak_gib'))} | "
                     f"{_f(st.get('test_psnr'))} |")
    peaks = [st["peak_gib"] for st in gpu.get("stages", {}).values() if st.get("peak_gib") is not None]
    lines += ["", f"Peak GPU memory over the whole run: {_f(max(peaks)) if peaks else 'n/a'} GiB.", "",
              "**Targets (issue 6)**", ""]
    for name, ok in report["targets"].items():
        lines.append(f"- {'met' if ok else 'not measured' if ok is None else 'NOT met'}: {name}")
    return "\n".join(lines) + "\n"
