"""Where a batch of `synctalk render` time goes on the GPU, and what each engine speed-up buys.

    PYTHONPATH=. python3 benchmarks/profile_render.py --subject S --workspace W [--batch 16] [--frames 128]

Renders ``--frames`` walked frames (head mode, the session defaults: head-box limit, 32 samples) and
prints one JSON object: ms per frame and FPS of ``RenderSession.render_batch`` (frames stay on the GPU;
no audio features, no copy to host: ``bench_render.py`` measures the whole loop) for

  * ``engine``: the defaults (march rounds with early termination + fused shading kernel);
  * ``no_rounds``: one 32-sample march per ray (engine.MARCH_ROUNDS = (32,));
  * ``unfused_shading``: the packed-weight PyTorch shading instead of the Triton kernel;

with rays and field samples per frame for each, plus the top CUDA kernels of the default engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from synctalk import subject as S
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.windows import n_video_frames
    from synctalk.log import setup_logging
    from synctalk.render.api import driving_features
    from synctalk.render import engine as E
    from synctalk.render.session import RenderSession
    from synctalk.render.track import build_track

    setup_logging(False)
    session = RenderSession(args.subject, args.workspace, "cuda")
    engine = session.engine
    n = args.frames
    wav = load_driving_audio(session.subject.path(S.AUDIO))
    features = driving_features(session, wav, n_video_frames(wav.size))
    track = build_track(session.c2w_nerf, session.expressions, session.n_track, n)
    session.load_frames(track.frame_ids)
    ids = torch.from_numpy(track.frame_ids).cuda()
    c2w = torch.from_numpy(track.c2w).cuda()
    exps = torch.from_numpy(track.expressions).cuda()
    code_frames = torch.arange(n, device="cuda") % features.shape[0]
    batches = []
    for s in range(0, n, args.batch):
        sl = slice(s, s + args.batch)
        batches.append((ids[sl], c2w[sl], exps[sl], engine.audio_codes(features, code_frames[sl])))

    def timed() -> dict:
        stats = {"rays": 0, "samples": 0}
        for b in batches:  # warm-up: Triton compiles (per cap / size-parity specialisation), cuBLAS handles
            session.render_batch(*b)
        torch.cuda.synchronize()
        start = time.perf_counter()
        orig = engine.render

        def counting(*a, **k):
            out = orig(*a, **k)
            stats["rays"] += out.rays
            stats["samples"] += out.samples
            return out

        engine.render = counting
        try:
            for b in batches:
                session.render_batch(*b)
            torch.cuda.synchronize()
        finally:
            engine.render = orig
        ms = (time.perf_counter() - start) * 1000 / n
        return {"ms_per_frame": ms, "fps": 1000 / ms, "rays_per_frame": stats["rays"] / n,
                "samples_per_frame": stats["samples"] / n}

    result = {"device": torch.cuda.get_device_name(), "batch": args.batch, "frames": n,
              "max_samples": engine.max_samples, "fused_shading": engine._fused_shade}
    result["engine"] = timed()
    print(json.dumps(result), flush=True)
    rounds = E.MARCH_ROUNDS
    E.MARCH_ROUNDS = (engine.max_samples,)
    result["no_rounds"] = timed()
    E.MARCH_ROUNDS = rounds
    print(json.dumps(result["no_rounds"]), flush=True)
    fused = engine._fused_shade
    engine._fused_shade = False
    result["unfused_shading"] = timed()
    engine._fused_shade = fused
    print(json.dumps(result["unfused_shading"]), flush=True)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for b in batches:
            session.render_batch(*b)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
    print(table, flush=True)
    print(json.dumps(result, indent=1), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_render.json").write_text(json.dumps(result, indent=1))
        (args.out / "profile_kernels.txt").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
