"""GPU benchmark of `synctalk render`: fast engine vs the reference whole-frame render, FPS, 60-s audio.

    PYTHONPATH=. python3 benchmarks/bench_render.py --subject .carry/anchor --workspace .carry/nerf_ws \
        --out "$OUT" [--seconds 60] [--batches 4,8,16]

Prints one JSON object:
  * ``agreement``: max/mean |engine - render_views.render_frame| on test frames (same weights, bf16 both);
  * ``fps``: frames/s of the render loop per mode and batch size, *including* the audio features of
    the clip, the AVE codes and compositing, *excluding* disk (frames are copied to host memory as
    uint8 and dropped) and excluding decoding the subject's frames (done once, up front, timed apart);
  * ``end_to_end``: `render_audio` on ``--seconds`` of the subject's own audio into an MP4, wall time
    of the whole call (load, decode, features, render, encode), when an MP4 backend exists here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class NullSink:
    def __init__(self) -> None:
        self.frames = 0

    def put(self, frame) -> None:
        self.frames += 1


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def agreement(subject: Path, workspace: Path, device, frames: int = 4) -> dict:
    """Engine vs the trainer's reference render on evenly spaced test frames."""
    import torch

    from synctalk.nerf import checkpoint as ckpt
    from synctalk.nerf.data import SceneTransform, load_subject
    from synctalk.nerf.render_views import render_frame
    from synctalk.nerf.trainer import Trainer
    from synctalk.render.engine import HeadRenderer
    from synctalk.render.model import find_model, load_head_model

    model = load_head_model(workspace, device)
    cfg = model.cfg
    data = load_subject(subject, device, downscale=cfg.downscale, max_frames=cfg.max_frames,
                        head_box_margin=cfg.head_box_margin, scene=SceneTransform.from_json(ckpt.load_meta(model.path)["scene"]))
    trainer = Trainer(data, cfg, Path("/tmp/bench_render_trainer"))
    tensors, _ = ckpt.load_checkpoint(find_model(workspace), device)
    trainer.field.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    trainer.grid.load_state_dict({"density": tensors["grid.density"], "occupied": tensors["grid.occupied"]})
    engine = HeadRenderer(model, data.intrinsics, device)
    ids = data.test_ids[torch.linspace(0, len(data.test_ids) - 1, frames).long()]
    codes = engine.audio_codes(data.audio, ids)
    out = engine.render(data.c2w[ids], codes, data.expressions[ids], data.bg[ids].float() / 255)
    diffs = []
    ref_s = time.perf_counter()
    refs = [render_frame(trainer, int(i)) for i in ids]
    sync(device)
    ref_s = (time.perf_counter() - ref_s) / len(ids)
    for k, ref in enumerate(refs):
        d = (out.rgb[k] - ref).abs()
        diffs.append({"frame": int(ids[k]), "max": float(d.max()), "mean": float(d.mean()),
                      "psnr_vs_ref": float(-10 * torch.log10((d ** 2).mean().clamp_min(1e-12)))})
    # As render/evaluate run it: rays limited to the frame's parsed head box grown by the session margin.
    from synctalk.nerf.data import _clip_boxes, mask_boxes
    from synctalk.render.session import HEAD_BOX_MARGIN

    head = data.head[ids].bool().cpu().numpy()
    limit = torch.from_numpy(_clip_boxes(mask_boxes(head, HEAD_BOX_MARGIN), data.height, data.width)).to(device)
    limited = engine.render(data.c2w[ids], codes, data.expressions[ids], data.bg[ids].float() / 255, limit)
    for k, ref in enumerate(refs):
        d = (limited.rgb[k] - ref).abs()
        diffs[k].update({"limited_max": float(d.max()), "limited_mean": float(d.mean()),
                         "limited_psnr_vs_ref": float(-10 * torch.log10((d ** 2).mean().clamp_min(1e-12)))})
    boxes = engine.head_boxes(data.c2w[ids]).tolist()
    return {"frames": diffs, "limited_rays_per_frame": limited.rays / len(ids), "limit_boxes": limit.tolist(), "reference_s_per_frame": ref_s, "rays_per_frame": out.rays / len(ids),
            "samples_per_frame": out.samples / len(ids), "boxes": boxes}


def loop_fps(subject: Path, workspace: Path, seconds: float, batches: list[int], torso: bool, portrait: bool,
             device_name: str) -> dict:
    import numpy as np
    import torch

    from synctalk import subject as S
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.windows import n_video_frames
    from synctalk.render.api import _run, driving_features
    from synctalk.render.session import RenderSession
    from synctalk.render.track import build_track

    t0 = time.perf_counter()
    session = RenderSession(subject, workspace, device_name, torso=torso, portrait=portrait)
    wav = load_driving_audio(S.Subject(subject).path(S.AUDIO))[: int(seconds * 16000)]
    n = n_video_frames(wav.size)
    track = build_track(session.c2w_nerf, session.expressions, session.n_track, n)
    session.load_frames(track.frame_ids)
    setup = time.perf_counter() - t0
    result = {"mode": session.mode, "frames": n, "setup_s (load model + decode frames)": setup, "batches": {}}
    for batch in batches:
        for attempt in ("warmup", "timed"):
            sync(session.device)
            start = time.perf_counter()
            features = driving_features(session, wav, n)
            sink = NullSink()
            frames = n if attempt == "timed" else min(n, 4 * batch)
            _run(session, track.frame_ids[:frames], track.c2w[:frames], track.expressions[:frames], features,
                 np.arange(frames, dtype=np.int64), batch, sink)
            sync(session.device)
            elapsed = time.perf_counter() - start
        result["batches"][batch] = {"seconds": elapsed, "fps": n / elapsed}
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if session.device.type == "cuda" else None
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-agreement", action="store_true",
                    help="skip the engine-vs-reference check (it needs the whole prepared subject)")
    ap.add_argument("--modes", default="head,portrait,torso,torso+portrait",
                    help="render-loop modes to time (torso ones only where a torso model exists)")
    ap.add_argument("--e2e-batch", type=int, default=16)
    args = ap.parse_args()

    import torch

    from synctalk.log import setup_logging
    from synctalk.nerf.trainer import resolve_device
    from synctalk.render.output import mp4_backend

    setup_logging(False)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "mp4_backend": mp4_backend(),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.no_agreement:
        summary["agreement"] = agreement(args.subject, args.workspace, device)
        print(json.dumps(summary["agreement"]), flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    known = {"head": (False, False), "portrait": (False, True), "torso": (True, False), "torso+portrait": (True, True)}
    modes = [known[m] for m in args.modes.split(",") if m]
    if not (args.workspace / "torso_model.json").is_file():
        modes = [m for m in modes if not m[0]]
    summary["fps"] = []
    for torso, portrait in modes:
        r = loop_fps(args.subject, args.workspace, args.seconds, batches, torso, portrait, args.device)
        summary["fps"].append(r)
        print(json.dumps(r), flush=True)
    if mp4_backend() is not None:
        from synctalk.render import RenderOptions, render_audio
        from synctalk import subject as S
        from synctalk.audio.load import load_driving_audio
        from synctalk.io.audio import write_wav

        clip = Path("/tmp/bench_render_clip.wav")
        write_wav(clip, load_driving_audio(S.Subject(args.subject).path(S.AUDIO))[: int(args.seconds * 16000)], 16000)
        start = time.perf_counter()
        info = render_audio(args.subject, clip, args.out / "render.mp4", RenderOptions(device=args.device, batch=args.e2e_batch),
                            workspace=args.workspace)
        summary["end_to_end"] = {"wall_s": time.perf_counter() - start, **info}
    else:
        summary["end_to_end"] = "skipped: neither PyAV nor an ffmpeg program here"
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    (args.out / "bench_render.json").write_text(text)
    shutil.rmtree("/tmp/bench_render_trainer", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
