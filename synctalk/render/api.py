"""``render_audio``: a trained subject speaking any audio file, to an MP4 (and/or PNG frames).

Frame count: the output has ``round(25 * audio seconds)`` frames (``synctalk.audio.windows.n_video_frames``:
samples / 640 rounded to the nearest integer, halves to even), the same rule that sized the subject's
own features. The audio is muxed whole and trimmed / padded with silence to exactly that many frames
(at most 20 ms), so audio and video end together.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from synctalk.errors import InputError
from synctalk.log import get_logger, progress
from synctalk.nerf.trainer import resolve_device
from synctalk.render.output import rgb_to_yuv420
from synctalk.render.session import RenderSession
from synctalk.render.silence import SILENCE_MODES, close_silences
from synctalk.render.track import BLINK_MODES, POSE_MODES, build_track

log = get_logger("render")

FPS = 25.0


@dataclass
class RenderOptions:
    torso: bool = False              # head over the trained torso model (else over the walked frame's torso.mp4)
    portrait: bool = False           # paste the face back into the walked source frame
    pose: str = "walk"               # walk | fixed
    smoothing: float = 0.0           # Gaussian sigma (frames) over the walked poses/expressions
    blink: str = "auto"              # auto | none
    frames_dir: str | Path | None = None
    device: str = "auto"
    batch: int = 16
    test: bool = False               # render the test split with its own audio (audio_path is ignored)
    allow_silent: bool = False
    max_samples: int | None = 32     # samples per ray (None: the training cap, 16; see session.RENDER_MAX_SAMPLES)
    silence: str = "closed"          # closed | natural: the mouth in pauses of new audio (synctalk.render.silence)

    def check(self) -> None:
        if self.pose not in POSE_MODES:
            raise InputError(f"pose must be one of {', '.join(POSE_MODES)}, got {self.pose!r}")
        if self.blink not in BLINK_MODES:
            raise InputError(f"blink must be one of {', '.join(BLINK_MODES)}, got {self.blink!r}")
        if self.silence not in SILENCE_MODES:
            raise InputError(f"silence must be one of {', '.join(SILENCE_MODES)}, got {self.silence!r}")
        if self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")
        if self.smoothing < 0:
            raise InputError(f"smoothing must be >= 0 frames, got {self.smoothing}")


def driving_features(session: RenderSession, wav: np.ndarray, n_frames: int) -> torch.Tensor:
    """Per-frame AVE features [n_frames, 512] of ``wav`` with the subject's own audio encoder (the path
    that wrote ``audio/features.npy``: mel -> per-frame windows -> encoder)."""
    from synctalk.audio.ave import audio_features
    from synctalk.audio.features import AVE_WEIGHTS, load_subject_ave

    if not session.subject.path(AVE_WEIGHTS).is_file():
        raise InputError(f"{session.subject.path(AVE_WEIGHTS)} is missing; run `synctalk train "
                         f"{session.subject.root} --stage audio` first")
    ave = load_subject_ave(session.subject.root, session.device)
    return torch.from_numpy(audio_features(ave, wav, n_frames)).to(session.device)


def _driving_inputs(session: RenderSession, wav: np.ndarray, n_frames: int, silence: str
                    ) -> tuple[torch.Tensor, dict]:
    """``driving_features``, with the pauses given the rest mouth when ``silence`` is "closed"."""
    features = driving_features(session, wav, n_frames)
    if silence == "closed":
        return close_silences(session.subject, wav, features)
    return features, {"mode": silence}


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def _run(session: RenderSession, frame_ids: np.ndarray, c2w: np.ndarray, expressions: np.ndarray,
         features: torch.Tensor, code_frames: np.ndarray, batch: int, sink, paster=None) -> None:
    """Render every frame in batches into ``sink`` (anything with ``put(uint8 frame)``); ``paster``
    (synctalk.render.fullres) puts portrait frames back into the full-resolution source."""
    dev = session.device
    ids_t = torch.from_numpy(frame_ids).to(dev)
    c2w_t = torch.from_numpy(c2w).to(dev)
    exp_t = torch.from_numpy(expressions).to(dev)
    code_t = torch.from_numpy(code_frames).to(dev)
    n = len(frame_ids)
    h, w = session.size
    # Colour conversion on the device when the sink encodes yuv420p itself (synctalk.render.output).
    yuv = paster is None and getattr(sink, "wants_yuv", False) and h % 2 == 0 and w % 2 == 0
    for start in progress(range(0, n, batch), desc="render", total=(n + batch - 1) // batch, unit="batch"):
        sl = slice(start, start + batch)
        codes = session.engine.audio_codes(features, code_t[sl])
        out = session.render_batch(ids_t[sl], c2w_t[sl], exp_t[sl], codes, host_ids=frame_ids[sl])
        if yuv:
            for planes in rgb_to_yuv420(out["frame"]).cpu().numpy():
                sink.put_yuv(planes)
            continue
        for k, frame in enumerate(to_uint8(out["frame"])):
            sink.put(paster(frame_ids[start + k], frame) if paster is not None else frame)


def render_audio(subject_root: str | Path, audio_path: str | Path | None, out_path: str | Path | None,
                 options: RenderOptions | None = None, workspace: str | Path | None = None) -> dict:
    """Render ``subject_root`` speaking ``audio_path`` into ``out_path`` (MP4, H.264 + AAC); see docs/render.md.

    ``out_path`` may be None when ``options.frames_dir`` is set (PNGs only). Returns frames, seconds
    (wall time of the whole call), fps (frames / seconds), out and mode."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.windows import n_video_frames
    from synctalk.render.output import FrameSink

    options = options or RenderOptions()
    options.check()
    if out_path is None and options.frames_dir is None:
        raise InputError("give an output MP4 path or a frames folder (--frames DIR)")
    started = time.perf_counter()
    _start_cuda_early(options.device)
    if not options.test:
        if audio_path is None:
            raise InputError("render needs --audio FILE (or --test for the subject's test split)")
        wav = load_driving_audio(audio_path, allow_silent=options.allow_silent)  # fail fast, before the model
    session = RenderSession(subject_root, workspace, options.device, options.torso, options.portrait,
                            max_samples=options.max_samples)
    loaded = time.perf_counter()
    silence = {"mode": "natural", "reason": "the test split keeps its own audio features"}
    if options.test:
        frame_ids, c2w, expressions, features, code_frames, wav = _test_inputs(session)
        session.load_frames(frame_ids, wait=False)
    else:
        n = n_video_frames(wav.size)
        track = build_track(session.c2w_nerf, session.expressions, session.n_track, n, options.pose,
                            options.smoothing, options.blink)
        frame_ids, c2w, expressions = track.frame_ids, track.c2w, track.expressions
        code_frames = np.arange(n, dtype=np.int64)
        # The walked frames decode on loader threads for the whole render (each batch waits only for
        # its own frames, synctalk.render.banks); the GPU kernels load while the audio features run.
        session.load_frames(frame_ids, wait=False)
        first_pose = torch.from_numpy(c2w[0]).to(session.device)
        features, silence = _alongside([lambda: session.engine.warm_up(first_pose)],
                                       lambda: _driving_inputs(session, wav, n, options.silence))
    paster = None
    if options.portrait and session.subject.manifest.get("crop"):
        from synctalk.render.fullres import FullResPaster

        paster = FullResPaster.for_subject(session.subject.manifest, session.subject.n_frames, frame_ids)
    prepared = time.perf_counter()
    frames_dir = Path(options.frames_dir) if options.frames_dir is not None else None
    mp4 = Path(out_path) if out_path is not None else None
    if mp4 is not None:
        mp4.parent.mkdir(parents=True, exist_ok=True)
    with FrameSink(mp4, frames_dir, FPS, wav, SAMPLE_RATE) as sink:
        _run(session, frame_ids, c2w, expressions, features, code_frames, options.batch, sink, paster)
        rendered = time.perf_counter()
    finished = time.perf_counter()
    seconds = finished - started
    n = len(frame_ids)
    info = {"frames": n, "seconds": seconds, "fps": n / max(seconds, 1e-9), "out": str(mp4) if mp4 else None,
            "frames_dir": str(frames_dir) if frames_dir else None, "mode": session.mode,
            "audio_seconds": wav.size / SAMPLE_RATE, "setup_seconds": prepared - started,
            "load_model_seconds": loaded - started, "render_seconds": rendered - prepared,
            "finish_output_seconds": finished - rendered, "device": str(session.device),
            "full_resolution": paster is not None, "silence": silence,
            "model": session.model.path.name, "options": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in asdict(options).items()}}
    log.info("rendered %d frames (%s) in %.1f s (%.1f frames/s overall) -> %s", n, session.mode, seconds,
             info["fps"], mp4 or frames_dir)
    return info


def _start_cuda_early(device: str) -> None:
    """Create the CUDA context on a thread while the audio decodes (~0.3-0.5 s of a fresh process);
    the session's first CUDA call waits for it under torch's own init lock."""
    import threading

    if device in ("auto", "cuda") and torch.cuda.is_available() and not torch.cuda.is_initialized():
        threading.Thread(target=torch.cuda.init, name="synctalk-cuda-init", daemon=True).start()


def _alongside(background: list, work):
    """Run ``work()`` on this thread while each callable in ``background`` runs on its own thread;
    returns ``work()``'s result once all are done (the first error of any is raised here)."""
    import threading

    failure: list[BaseException] = []

    def guarded(fn) -> None:
        try:
            fn()
        except BaseException as e:  # re-raised on the caller's thread
            failure.append(e)

    threads = [threading.Thread(target=guarded, args=(fn,), name="synctalk-start-up", daemon=True)
               for fn in background]
    for thread in threads:
        thread.start()
    try:
        result = work()
    finally:
        for thread in threads:
            thread.join()
    if failure:
        raise failure[0]
    return result


def _test_inputs(session: RenderSession):
    """The test split with its own poses, expressions, features and audio (the original's --test)."""
    from synctalk.audio.load import load_driving_audio
    from synctalk.nerf.data import load_audio_features

    sub = session.subject
    ids = np.arange(sub.split.n_train, sub.n_frames, dtype=np.int64)
    if ids.size == 0:
        raise InputError(f"{sub.root} has an empty test split")
    features = torch.from_numpy(load_audio_features(sub, sub.n_frames)).to(session.device)
    wav = load_driving_audio(sub.path(S.AUDIO), allow_silent=True)
    wav = wav[ids[0] * SAMPLES_PER_FRAME:(ids[-1] + 1) * SAMPLES_PER_FRAME]
    return ids, session.c2w_nerf[ids], session.expressions[ids], features, ids, wav


def prime_render_kernels(subject_root: str | Path, workspace: str | Path | None = None,
                         device: str = "auto") -> float | None:
    """Load (and on a machine's first run, compile) the render kernels for the model just exported to
    ``workspace``, so the user's first ``synctalk render`` finds them in Triton's on-disk cache instead of
    spending ~30 s compiling them (a fresh machine's first 60-s render took 44.8 s instead of ~10 s).
    CUDA only; returns the seconds it took, or None where nothing was done."""
    if resolve_device(device).type != "cuda":
        return None
    started = time.perf_counter()
    session = RenderSession(subject_root, workspace, device=device)
    session.engine.warm_up(torch.from_numpy(session.c2w_nerf[0]).to(session.device))
    torch.cuda.synchronize(session.device)
    return time.perf_counter() - started
