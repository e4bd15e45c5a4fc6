"""Benchmark: train the subject sync model (default preset) on a prepared subject and report time,
held-out sync accuracy (fraction of voiced test windows whose best offset in +-15 frames is within +-1;
the all-window figure, pauses included, and the 13/25-window aggregated figures are reported beside it)
and peak memory. Writes the subject's
audio/ artefacts as a side effect. Target for the default preset on
one H100 with the 71-s clip: >= 90 % within +-1 frame, train_seconds < 180.

    python benchmarks/bench_audio.py SUBJECT_DIR [--preset default|tiny] [--steps N] [--device cuda]
                                     [--set FIELD=VALUE ...]   (any SyncTrainConfig field, e.g. lr=3e-4)

On the GPU machine (no PyAV/mediapipe needed: frames.mp4 is read with OpenCV, audio.wav with the
standard library, landmarks from landmarks.npz).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subject", type=Path)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a SyncTrainConfig field (value parsed as JSON, else kept as a string)")
    args = ap.parse_args()

    import torch

    from synctalk.audio.features import AVE_META, build_subject_audio
    from synctalk.audio.sync_model import preset
    from synctalk.log import setup_logging

    setup_logging()
    overrides = {"device": args.device}
    if args.steps:
        overrides["steps"] = args.steps
    for item in args.set:
        field, _, value = item.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    try:
        cfg = preset(args.preset, **overrides)
    except TypeError as e:   # an unknown field name
        ap.error(str(e))
    t0 = time.perf_counter()
    facts = build_subject_audio(args.subject, cfg)
    total = time.perf_counter() - t0
    meta = json.loads((args.subject / AVE_META).read_text())
    result = {
        "preset": args.preset, "steps": cfg.steps, "device": meta["training"]["device"],
        "train_seconds": round(meta["training"]["seconds"], 1), "total_seconds": round(total, 1),
        "test_within_1_frame": meta["test_sync"]["within_tolerance"], "test_exact": meta["test_sync"]["exact"],
        "test_windows": meta["test_sync"]["windows"],
        "test_within_1_frame_all_windows": meta["test_sync"].get("within_tolerance_all"),
        "test_windows_all": meta["test_sync"].get("windows_all"),
        # Aggregated scores (a different metric: similarity curves averaged over 13 / 25 windows).
        **{f"test_{k}": v for k, v in meta["test_sync"].items() if k.startswith("within_tolerance_span")},
        "test_offset_histogram": meta["test_sync"].get("offset_histogram"),
        "overrides": overrides,
        "loss_first": round(meta["training"]["loss_first"], 3), "loss_last": round(meta["training"]["loss_last"], 3),
        "amp": meta["training"].get("amp"), "loss_curve": meta["training"].get("loss_curve"),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "facts": facts,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
