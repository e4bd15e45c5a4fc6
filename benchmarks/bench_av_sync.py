"""How reliable is the offline lip-sync score (synctalk.audio.av_sync) on short clips of real footage?

The e2e benchmark scores 6.5-24-s renders with it, so it has to find the right offset on clips that
short. For each real video in ../shared/data (its own, in-sync audio) this slides excerpts of L seconds
(every ``--stride`` frames) and, for each excerpt, scores the video against its audio shifted by
d in {-10, -5, 0, +5, +10} frames (d > 0: audio late). An excerpt counts as found when the best offset
is within +-2 frames of d (the e2e target's tolerance). Both signal pairs (``--methods``) are scored
on the same excerpts. Also printed: each whole clip's offset and peak r, and the fraction of its
silent frames with the mouth closed (the reference for the e2e "mouth closed in silence" target).

CPU only (face mesh ~25 s for the 71-s clip on 2 cores).
`python benchmarks/bench_av_sync.py [--data ../shared/data] [--json out/av_sync.json]`
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synctalk.audio.av_sync import (  # noqa: E402
    MAX_OFFSET, METHODS, MIN_FRAMES, offset_correlations, score_sync, speech_frames, sync_signals)

CLIPS = ("cnn_anchor_dfrf_71s.mp4", "german_anchor_mimictalk_20s.mp4", "may_real3dportrait_5s.mp4")
SHIFTS = (-10, -5, 0, 5, 10)
TOLERANCE = 2


def excerpt_hits(mouth: np.ndarray, audio: np.ndarray, length: int, stride: int) -> dict[int, list[bool]]:
    """{shift: [found?] per excerpt}: video frames [s, s+L) against audio frames [s-d, s-d+L)."""
    n = len(mouth)
    out: dict[int, list[bool]] = {}
    for d in SHIFTS:
        hits = []
        for s in range(max(0, d), n - length + min(0, d) + 1, stride):
            corr = offset_correlations(mouth[s:s + length], audio[s - d:s - d + length], MAX_OFFSET)
            hits.append(abs(int(np.argmax(corr)) - MAX_OFFSET - d) <= TOLERANCE)
        out[d] = hits
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--seconds", type=float, nargs="+", default=[3, 4, 6, 8, 13])
    ap.add_argument("--stride", type=int, default=5, help="frames between excerpt starts")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from synctalk.audio.av_sync import load_talking_video

    report: dict = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tolerance": TOLERANCE,
                    "shifts": list(SHIFTS), "stride": args.stride, "clips": {}}
    for name in CLIPS:
        path = args.data / name
        if not path.is_file():
            print(f"skip {name}: not found under {args.data}")
            continue
        t0 = time.perf_counter()
        lms, wav = load_talking_video(path)
        speech = speech_frames(wav, len(lms))
        clip: dict = {"frames": len(lms), "landmark_seconds": round(time.perf_counter() - t0, 1), "methods": {}}
        for method in args.methods:
            whole = score_sync(lms, wav, speech, method=method)
            mouth, audio = sync_signals(lms, wav, method)
            rows = {}
            for sec in args.seconds:
                length = int(round(sec * 25))
                if length < MIN_FRAMES or length > len(lms) - 10:
                    continue
                hits = excerpt_hits(mouth, audio, length, args.stride)
                rows[f"{sec:g}"] = {"excerpts": len(hits[0]),
                                    "found": float(np.mean([h for v in hits.values() for h in v])),
                                    "found_in_sync": float(np.mean(hits[0]))}
            clip["methods"][method] = {"whole_offset": whole.best_offset, "whole_r": round(whole.peak_correlation, 3),
                                       "silent_frames_closed": whole.silent_frames_closed,
                                       "silent_frames": whole.silent_frames, "excerpts": rows}
        report["clips"][name] = clip

    print(f"\nav_sync reliability on excerpts of real footage: best offset within +-{TOLERANCE} of the true "
          f"shift (shifts {', '.join(f'{d:+d}' for d in SHIFTS)} pooled; in brackets: unshifted only), "
          f"excerpts every {args.stride} frames\n")
    secs = [f"{s:g}" for s in args.seconds]
    print("| clip | method | whole clip: offset, r | " + " | ".join(f"{s} s" for s in secs) + " |")
    print("|---|---|---|" + "---|" * len(secs))
    for name, clip in report["clips"].items():
        for method, m in clip["methods"].items():
            cells = []
            for s in secs:
                e = m["excerpts"].get(s)
                cells.append("n/a" if e is None else
                             f"{100 * e['found']:.1f} % ({100 * e['found_in_sync']:.0f} %) of {e['excerpts']}")
            print(f"| {name} | {method} | {m['whole_offset']:+d}, {m['whole_r']:.2f} | " + " | ".join(cells) + " |")
    print("\nsilent frames with the mouth closed (the real footage itself):")
    for name, clip in report["clips"].items():
        m = next(iter(clip["methods"].values()))
        closed = "n/a" if m["silent_frames_closed"] is None else f"{100 * m['silent_frames_closed']:.0f} %"
        print(f"  {name}: {closed} of {m['silent_frames']} silent frames")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
