"""Runs the prepare stages in order, resumably.

Each stage declares the files it writes. After it succeeds, a record ``.stages/<name>.json`` stores
its version, settings, published facts, the size and mtime of every output, and a digest chaining the
records of the stages it depends on. A later run skips a stage only when its record matches all of
that (so an edited setting, a re-run upstream stage, or a deleted/truncated output re-runs it);
``force=True`` re-runs everything. Outputs are written atomically by the stages, and the record is
written last, so an interrupted run never leaves a file that a later run trusts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synctalk import SUBJECT_FORMAT_VERSION, __version__
from synctalk.errors import InputError, StageError, SyncTalkError
from synctalk.io.atomic import write_json
from synctalk.log import get_logger
from synctalk.prepare.config import PrepareConfig
from synctalk.prepare.context import StageContext
from synctalk import subject as S

log = get_logger("prepare")


@dataclass(frozen=True)
class Stage:
    name: str
    version: int                       # bump when the stage's output changes meaning
    outputs: tuple[str, ...]           # files (relative to the subject dir) the stage writes
    depends: tuple[str, ...]           # stages whose outputs it reads
    settings: Callable[[PrepareConfig], Any]   # the part of the config that affects this stage
    run: Callable[[StageContext], dict[str, Any]]


def _stages() -> list[Stage]:
    # Imported here so `synctalk --help` does not import cv2/mediapipe/torch.
    from synctalk.prepare import background, decode, expressions, figures, landmarks, parsing, pose

    return [
        Stage("decode", 1, (S.FRAMES, S.AUDIO), (), lambda c: c.decode, decode.run),
        Stage("landmarks", 2, (S.LANDMARKS, S.SEGMENTATION), ("decode",),
              lambda c: c.landmarks, landmarks.run),
        Stage("parsing", 2, (S.PARSING, S.PORTRAIT), ("decode", "landmarks"), lambda c: c.parsing, parsing.run),
        Stage("expressions", 1, (S.EXPRESSIONS,), ("landmarks",), lambda c: c.expressions, expressions.run),
        Stage("background", 1, (S.BACKGROUND, S.TORSO, S.TORSO_ALPHA), ("decode", "parsing"),
              lambda c: c.background, background.run),
        Stage("pose", 3, (S.POSE,), ("decode", "landmarks"), lambda c: c.pose, pose.run),
        Stage("figures", 1, (f"{S.FIGURES}/contact_sheet.png", f"{S.FIGURES}/pose_track.png"),
              ("decode", "landmarks", "parsing", "pose"), lambda c: None, figures.run),
    ]


STAGE_NAMES = ("decode", "landmarks", "parsing", "expressions", "background", "pose", "figures")


def _settings_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return obj


def _record_path(root: Path, name: str) -> Path:
    return root / S.STAGE_DIR / f"{name}.json"


def _load_record(root: Path, name: str) -> dict[str, Any] | None:
    p = _record_path(root, name)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _file_stamp(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _expected_key(stage: Stage, cfg: PrepareConfig, source_key: dict, records: dict[str, dict]) -> str:
    upstream = {d: records[d]["digest"] for d in stage.depends}
    return _digest({
        "stage": stage.name, "version": stage.version, "format": SUBJECT_FORMAT_VERSION,
        "settings": _settings_json(stage.settings(cfg)), "upstream": upstream,
        "source": source_key if not stage.depends else None,  # root stages read the video
    })


def _record_valid(root: Path, rec: dict | None, key: str) -> bool:
    if not rec or rec.get("key") != key:
        return False
    for name, stamp in rec.get("outputs", {}).items():
        if _file_stamp(root / name) != stamp:
            return False
    return True


def prepare(source: str | Path, root: str | Path, cfg: PrepareConfig | None = None,
            force: bool = False, only: tuple[str, ...] | None = None, jobs: int | None = None) -> dict[str, Any]:
    """Prepare ``source`` into subject directory ``root``; returns the manifest (subject.json).

    ``jobs`` bounds how many independent stages run at once (default: the number of cores, max 4)."""
    cfg = cfg or PrepareConfig()
    source = Path(source).expanduser().resolve()
    root = Path(root).expanduser().resolve()
    if not source.is_file():
        raise InputError(f"input video not found: {source}")
    root.mkdir(parents=True, exist_ok=True)
    (root / S.STAGE_DIR).mkdir(exist_ok=True)
    st = source.stat()
    source_key = {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    stages = _stages()
    # With --only, stages after the last requested one are left alone; earlier unrequested stages
    # must already be valid (their outputs are inputs of the requested ones).
    last = max(i for i, st in enumerate(stages) if only is None or st.name in only)
    todo = stages[: last + 1]
    records: dict[str, dict] = {}
    # Stages whose inputs are ready run concurrently (parsing ∥ expressions, background ∥ pose):
    # their heavy parts are OpenCV / numpy / torch / x264 calls that release the GIL, so threads use
    # both cores without the start-up cost of processes.
    workers = max(1, min(jobs or os.cpu_count() or 1, 4))
    running: dict[Future, Stage] = {}
    # The stages' BLAS work is many small matrices: one BLAS thread is faster even alone (measured:
    # rigid pose fit 2.1 s vs 3.0 s with two), and stops OpenBLAS threads spinning against the other
    # stage running beside it.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stage") as pool:
        try:
            while len(records) < len(todo):
                for stage in todo:
                    if stage.name in records or stage in running.values():
                        continue
                    if not all(d in records for d in stage.depends):
                        continue
                    key = _expected_key(stage, cfg, source_key, records)
                    rec = _load_record(root, stage.name)
                    wanted = only is None or stage.name in only
                    if _record_valid(root, rec, key) and (not force or not wanted):
                        log.info("%-12s up to date, skipped", stage.name)
                        records[stage.name] = rec
                    elif not wanted:
                        raise StageError(f"stage {stage.name!r} has no valid output yet; "
                                         f"run it before {', '.join(only or ())}")
                    else:
                        ctx = StageContext(root=root, source=source, config=cfg, facts=_facts(records, stages))
                        running[pool.submit(_run_stage, stage, ctx, cfg, key)] = stage
                if len(records) == len(todo):
                    break
                if not running:
                    raise StageError("prepare stages have a dependency cycle")  # a bug in _stages()
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    stage = running.pop(fut)
                    records[stage.name] = fut.result()  # re-raises the stage's error
        except BaseException:
            for fut in running:  # let running stages finish their atomic writes, then report
                fut.cancel()
            raise

    ctx = StageContext(root=root, source=source, config=cfg, facts=_facts(records, stages))
    if len(todo) < len(stages):
        log.info("stopped after %s (--only); subject.json is written once every stage is done", stages[last].name)
        return {}
    manifest = build_manifest(ctx, {st.name: records[st.name] for st in stages})
    write_json(root / S.MANIFEST, manifest)
    return manifest


def _facts(records: dict[str, dict], stages: list[Stage]) -> dict[str, Any]:
    """Facts published by the finished stages, merged in pipeline order."""
    facts: dict[str, Any] = {}
    for st in stages:
        if st.name in records:
            facts.update(records[st.name].get("facts", {}))
    return facts


def _run_stage(stage: Stage, ctx: StageContext, cfg: PrepareConfig, key: str) -> dict[str, Any]:
    log.info("%-12s running", stage.name)
    t0 = time.perf_counter()
    try:
        facts = stage.run(ctx) or {}
    except SyncTalkError:
        raise
    except Exception as e:  # a bug or an unforeseen input: name the stage, keep the cause
        raise StageError(f"stage {stage.name} failed: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - t0
    outputs = {}
    for name in stage.outputs:
        stamp = _file_stamp(ctx.root / name)
        if stamp is None:
            raise StageError(f"stage {stage.name} did not write {name}")
        outputs[name] = stamp
    rec = {"stage": stage.name, "version": stage.version, "key": key,
           "digest": _digest({"key": key, "outputs": outputs}),
           "settings": _settings_json(stage.settings(cfg)), "facts": facts,
           "outputs": outputs, "seconds": round(seconds, 3), "synctalk": __version__,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(_record_path(ctx.root, stage.name), rec)
    log.info("%-12s done in %.1f s", stage.name, seconds)
    return rec


def build_manifest(ctx: StageContext, records: dict[str, dict]) -> dict[str, Any]:
    f = ctx.facts
    n = int(f["n_frames"])
    split = S.Split.temporal(n, ctx.config.test_denominator)
    files = {name: {"bytes": (ctx.root / name).stat().st_size}
             for rec in records.values() for name in rec["outputs"]}
    return {
        "format_version": SUBJECT_FORMAT_VERSION,
        "synctalk": __version__,
        "source": f.get("source"),
        "frames": n,
        "fps": f["fps"],
        "width": f["width"],
        "height": f["height"],
        "audio": f.get("audio"),
        "crop": f.get("crop"),
        "camera": f.get("camera"),
        "split": split.to_json(),
        "labels": S.LABEL_NAMES,
        "expression_names": list(S.EXPRESSION_NAMES),
        "files": files,
        "total_bytes": sum(v["bytes"] for v in files.values()),
        "stages": {k: {"version": r["version"], "seconds": r["seconds"], "settings": r["settings"],
                       "facts": r["facts"], "finished": r["finished"]} for k, r in records.items()},
    }
