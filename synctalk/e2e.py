"""`synctalk run`: one command from a talking-head video and new audio to a finished MP4.

prepare (resumable, synctalk.prepare.pipeline) -> audio encoder (only when the subject has none) ->
head + lips (synctalk.nerf.train_run) -> torso (synctalk.torso.run) -> render the new audio
(synctalk.render.render_audio) -> a JSON report beside the MP4.

Every stage is skipped when its output is already there, was made with the same settings, and is newer
than the output of the stage it depends on; a stage interrupted half-way resumes from its latest
checkpoint. So re-running the same command after a crash (or with a second audio file) only does the
work that is left. Without a CUDA GPU the ``tiny`` preset is used (minutes on a CPU, low quality) with a
warning; ``preset`` overrides that choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from synctalk.errors import InputError, StageError
from synctalk.log import get_logger

log = get_logger("e2e")

# Render modes of the final video -> (torso model, portrait paste-back); docs/render.md describes them.
MODES: dict[str, tuple[bool, bool]] = {
    "head": (False, False),
    "torso": (True, False),
    "portrait": (False, True),
    "torso+portrait": (True, True),
}
DEFAULT_MODE = "torso+portrait"
CPU_PRESET = "tiny"
GPU_PRESET = "fast"
# The audio encoder preset that goes with each training preset (the sync model's own presets).
AUDIO_PRESET_FOR = {"tiny": "tiny", "fast": "default", "paper": "default"}


@dataclass
class RunOptions:
    preset: str | None = None          # head/lips/torso preset; None: fast with CUDA, tiny without
    audio_preset: str | None = None    # sync-model preset; None: the one that goes with ``preset``
    prepare_preset: str = "default"
    subject: Path | None = None        # subject directory; None: next to the output (default_subject_dir)
    mode: str = DEFAULT_MODE
    device: str = "auto"               # auto | cpu | cuda, for training and rendering
    # --set FIELD=VALUE (head/lips), torso.FIELD=VALUE, audio.FIELD=VALUE, prepare.STAGE.FIELD=VALUE
    overrides: list[str] = field(default_factory=list)
    report: Path | None = None         # report JSON; None: OUT with the suffix .report.json


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_presets(opts: RunOptions, has_cuda: bool) -> tuple[str, str, list[str]]:
    """(training preset, audio preset, warnings for the user)."""
    warnings: list[str] = []
    wants_cuda = opts.device.startswith("cuda")
    if wants_cuda and not has_cuda:
        raise InputError("--device cuda was given but no CUDA GPU is visible; use --device auto or cpu")
    on_gpu = has_cuda and opts.device != "cpu"
    name = opts.preset or (GPU_PRESET if on_gpu else CPU_PRESET)
    if opts.preset is None and not on_gpu:
        warnings.append("no CUDA GPU in use: training with the 'tiny' preset on the CPU (slow, and the video "
                        "will look blurry; it shows the pipeline works, not what the model can do)")
    elif name != CPU_PRESET and not on_gpu:
        warnings.append(f"the '{name}' preset on the CPU will take many hours; use a CUDA GPU or --preset tiny")
    audio = opts.audio_preset or AUDIO_PRESET_FOR.get(name, "default")
    return name, audio, warnings


def default_subject_dir(video: Path, out: Path) -> Path:
    """Where the prepared subject and its models go: beside the output, named after the video."""
    return out.parent / f"{video.stem}.synctalk"


def default_report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def _normalised(obj: Any) -> Any:
    """JSON round trip, so a config compares equal to the copy a checkpoint stored."""
    return json.loads(json.dumps(obj))


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def output_is_current(meta_json: Path, config: dict, upstream: Path | None) -> bool:
    """True when ``meta_json`` (a model or checkpoint) exists, stores ``config``, and is not older than
    ``upstream`` (the output it was trained from; retraining that invalidates this one)."""
    meta = _read_meta(meta_json)
    if meta is None or _normalised(meta.get("config")) != _normalised(config):
        return False
    return upstream is None or not upstream.is_file() or meta_json.stat().st_mtime >= upstream.stat().st_mtime


def _check_inputs(video: Path, audio: Path, out: Path, opts: RunOptions) -> None:
    """Everything that can be checked before hours of work: files, the output type, the MP4 writer."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.render.output import mp4_backend

    if not video.is_file():
        raise InputError(f"input video not found: {video}")
    load_driving_audio(audio)  # decodes (and rejects silent or broken audio) now, not after training
    if out.suffix.lower() != ".mp4":
        raise InputError(f"the output must be an .mp4 file, got {out}")
    if out.is_dir():
        raise InputError(f"the output {out} is a directory; give a file name ending in .mp4")
    if opts.mode not in MODES:
        raise InputError(f"unknown mode {opts.mode!r}; choose from {', '.join(MODES)}")
    if mp4_backend() is None:
        raise InputError("cannot write MP4 here: install PyAV (pip install av) or put ffmpeg on PATH")


OVERRIDE_GROUPS = ("torso", "audio", "prepare")  # `--set GROUP.FIELD=VALUE`; no prefix = head/lips


def split_overrides(items: list[str]) -> dict[str, list[str]]:
    """--set items -> {"head": [...], "torso": [...], "audio": [...], "prepare": [...]} without the prefixes."""
    groups: dict[str, list[str]] = {"head": [], **{g: [] for g in OVERRIDE_GROUPS}}
    for item in items:
        prefix, dot, rest = item.partition(".")
        key = prefix if dot and prefix in OVERRIDE_GROUPS and "=" in rest else "head"
        groups[key].append(rest if key != "head" else item)
    return groups


def train_configs(preset_name: str, overrides: list[str], device: str):
    """(TrainConfig, TorsoConfig) of ``preset_name`` with the user's overrides.

    The tiny preset keeps only 48 frames for the unit tests; a user's run trains on the whole video, so
    ``max_frames`` is lifted unless the user sets it."""
    from synctalk.nerf.presets import parse_overrides, preset
    from synctalk.torso.presets import parse_torso_overrides, torso_preset

    groups = split_overrides(overrides)
    head = parse_overrides(groups["head"])
    head.setdefault("max_frames", None)
    torso = parse_torso_overrides(groups["torso"])
    if device != "auto":  # else each preset's own device (tiny: cpu, the others: auto)
        head.setdefault("device", device)
        torso.setdefault("device", device)
    return preset(preset_name, **head), torso_preset(preset_name, **torso)


def audio_config(audio_preset: str, overrides: list[str]):
    """The sync-model (audio encoder) config of ``audio_preset`` with ``--set audio.FIELD=VALUE`` items."""
    from synctalk.audio.sync_model import preset as sync_preset
    from synctalk.config import apply_overrides

    return apply_overrides(sync_preset(audio_preset), split_overrides(overrides)["audio"])


def prepare_config(prepare_preset: str, overrides: list[str]):
    from synctalk.config import apply_overrides
    from synctalk.prepare.config import preset

    return apply_overrides(preset(prepare_preset), split_overrides(overrides)["prepare"])


def fit_sync_check_to_split(cfg, n_test: int):
    """The audio stage scores held-out sync over +-``eval_max_offset`` frames of the test split and refuses
    a split too short for it. That score is a diagnostic, so a short video gets a narrower range instead
    of a refusal; only a split too short for +-1 frame stops the run."""
    from synctalk.audio.sync_model import HALF

    widest = (n_test - 1 - 2 * HALF) // 2
    if widest >= cfg.eval_max_offset:
        return cfg
    if widest < 1:
        raise InputError(f"the video is too short: its test split (the last 1/11) has {n_test} frames, the audio "
                         f"stage needs at least {2 * HALF + 3}; use a video of at least 4 seconds")
    log.warning("short video: the held-out sync check uses +-%d frames instead of +-%d", widest, cfg.eval_max_offset)
    return replace(cfg, eval_max_offset=widest)


def run_audio_stage(root: Path, cfg) -> dict:
    """Train the subject's audio encoder unless its features and weights are already there."""
    from synctalk.audio.features import AVE_WEIGHTS, FEATURES, build_subject_audio
    from synctalk.subject import Subject

    if (root / FEATURES).is_file() and (root / AVE_WEIGHTS).is_file():
        log.info("audio: encoder and features already in %s; skipped", root / FEATURES)
        return {"skipped": True}
    split = Subject(root).split
    cfg = fit_sync_check_to_split(cfg, split.n_frames - split.n_train)
    return {"skipped": False, **build_subject_audio(root, cfg)}


def run_head_stages(root: Path, cfg) -> dict:
    """Head then lips: skipped when ``lips_model`` is current, resumed from ``checkpoints/latest`` when
    an earlier run of the same settings stopped part-way."""
    from synctalk.audio.features import FEATURES
    from synctalk.nerf.train_run import train_subject, workspace

    work = workspace(root)
    features = root / FEATURES
    if output_is_current(work / "lips_model.json", cfg.to_json(), features):
        log.info("head + lips: %s is current; skipped", work / "lips_model.json")
        return {"skipped": True, **_head_summary(_read_meta(work / "metrics.json") or {})}
    resume = output_is_current(work / "checkpoints" / "latest.json", cfg.to_json(), features)
    if resume:
        log.info("head + lips: resuming from %s", work / "checkpoints" / "latest.json")
    summary = train_subject(root, cfg, ("head", "lips"), resume=resume)
    return {"skipped": False, "resumed": resume, **_head_summary(summary)}


def _head_summary(summary: dict) -> dict:
    test = summary.get("test", {})
    return {"train_seconds": {k: v.get("seconds") for k, v in summary.get("stages", {}).items()},
            "test_psnr": test.get("psnr"), "test_psnr_head": test.get("psnr_head"),
            "test_frames": test.get("frames"), "device": summary.get("device")}


def run_torso_stage(root: Path, cfg) -> dict:
    """The torso with the trained head frozen; skipped when ``torso_model`` is current and newer than the
    head it was trained on."""
    from synctalk.nerf.train_run import workspace
    from synctalk.torso.run import train_torso

    work = workspace(root)
    head = work / "lips_model.json"
    if output_is_current(work / "torso_model.json", cfg.to_json(), head):
        log.info("torso: %s is current; skipped", work / "torso_model.json")
        return {"skipped": True, **_torso_summary(_read_meta(work / "torso_metrics.json") or {})}
    resume = output_is_current(work / "checkpoints" / "torso_latest.json", cfg.to_json(), head)
    summary = train_torso(root, cfg, resume=resume)
    return {"skipped": False, "resumed": resume, **_torso_summary(summary)}


def _torso_summary(summary: dict) -> dict:
    test = summary.get("test", {})
    return {"train_seconds": summary.get("train", {}).get("seconds"), "test_psnr": test.get("psnr"),
            "test_psnr_head_over_gt_torso": test.get("psnr_head_over_gt_torso"),
            "test_psnr_torso": test.get("psnr_torso"), "test_frames": test.get("frames")}


def run_pipeline(video: str | Path, audio: str | Path, out: str | Path, opts: RunOptions | None = None) -> dict:
    """Video + audio -> ``out`` (MP4). Returns the report (also written as JSON, see ``RunOptions.report``)."""
    from synctalk.io.atomic import write_json
    from synctalk.prepare.pipeline import prepare
    from synctalk.render import RenderOptions, render_audio

    opts = opts or RunOptions()
    video, audio, out = Path(video).expanduser(), Path(audio).expanduser(), Path(out).expanduser()
    _check_inputs(video, audio, out, opts)
    preset_name, audio_preset, warnings = choose_presets(opts, cuda_available())
    for w in warnings:
        log.warning("%s", w)
    # Every setting is parsed before the long stages start, so a typo fails in a second.
    cfg, torso_cfg = train_configs(preset_name, opts.overrides, opts.device)
    audio_cfg = audio_config(audio_preset, opts.overrides)
    if opts.device != "auto":
        audio_cfg = replace(audio_cfg, device=opts.device)
    prep_cfg = prepare_config(opts.prepare_preset, opts.overrides)
    root = (opts.subject or default_subject_dir(video, out)).expanduser().resolve()
    report_path = opts.report or default_report_path(out)
    report: dict[str, Any] = {"video": str(video.resolve()), "audio": str(audio.resolve()), "subject": str(root),
                              "preset": preset_name, "audio_preset": audio_preset, "mode": opts.mode,
                              "warnings": warnings, "stages": {}}
    started = time.perf_counter()

    def timed(name: str, fn, *args) -> dict:
        t0 = time.perf_counter()
        log.info("== %s ==", name)
        try:
            facts = fn(*args)
        except BaseException as e:
            # The report of a failed run says where it stopped; a re-run resumes from there.
            report["failed_stage"], report["error"] = name, f"{type(e).__name__}: {e}"
            write_json(report_path, report)
            converted = _as_stage_error(name, e)
            if converted is e:
                raise
            raise converted from e
        facts["seconds"] = time.perf_counter() - t0
        report["stages"][name] = facts
        return facts

    timed("prepare", lambda: _prepare_facts(prepare(video, root, prep_cfg)))
    timed("audio", run_audio_stage, root, audio_cfg)
    timed("head+lips", run_head_stages, root, cfg)
    timed("torso", run_torso_stage, root, torso_cfg)
    torso, portrait = MODES[opts.mode]
    render = timed("render", lambda: render_audio(root, audio, out, RenderOptions(
        torso=torso, portrait=portrait, device=opts.device)))
    report["output"] = render.get("out") or str(out)
    report["total_seconds"] = time.perf_counter() - started
    write_json(report_path, report)
    report["report"] = str(report_path)
    return report


def _as_stage_error(stage: str, e: BaseException) -> BaseException:
    """Failures a user can act on become one line (disk full, out of GPU memory); our own errors already
    are one line, and anything else is a bug whose traceback is worth keeping."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return StageError(f"{stage}: the GPU ran out of memory; close other GPU programs or use a smaller "
                          "preset (--preset tiny) or --set rays_per_step=32768")
    if isinstance(e, OSError):
        return StageError(f"{stage}: {e.strerror or e} ({e.filename or 'file system'}); re-run the same command "
                          "to continue where it stopped")
    return e


def _prepare_facts(manifest: dict) -> dict:
    return {"frames": manifest.get("frames"), "width": manifest.get("width"), "height": manifest.get("height"),
            "fps": manifest.get("fps")}


def _fmt_db(value: Any) -> str:
    return f"{value:.2f} dB" if isinstance(value, (int, float)) else "n/a"


def summary_lines(report: dict) -> list[str]:
    """The few lines `synctalk run` prints at the end."""
    st = report["stages"]
    times = ", ".join(f"{name} {facts['seconds']:.1f} s" + (" (skipped)" if facts.get("skipped") else "")
                      for name, facts in st.items())
    head, torso, render = st.get("head+lips", {}), st.get("torso", {}), st.get("render", {})
    lines = [f"stages: {times}; total {report['total_seconds']:.1f} s (preset {report['preset']})",
             f"test PSNR from training: head+lips {_fmt_db(head.get('test_psnr'))} (head over GT torso), "
             f"full with torso {_fmt_db(torso.get('test_psnr'))}",
             f"output: {report['output']} ({render.get('frames', 0)} frames, {render.get('audio_seconds', 0):.1f} s "
             f"of audio, mode {report['mode']}); report: {report['report']}"]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines
