"""How far the real head edge reaches past the parsing's head mask (CPU, a prepared subject).

    .venv/bin/python benchmarks/bench_gt_outline.py --subject .carry/anchor_r [--every 60]

For background-labelled pixels beside the head (nearer the head than the rest of the person), the PSNR
between the frame and the clean plate, by distance from the person mask. Where the frame still differs
from the plate, the parsing cut off part of the real edge (hair halo, soft edge, compression ringing);
``composite_gt``'s ``halo_px`` keeps the frame's colour out to that distance. Also prints, per halo, how
close the target (``composite_gt``) is to the frame on those pixels, and how much the target changes
between consecutive frames in a band around the head outline (RMS, 0-255 levels): the raw frames'
own change there (the head moving) is the floor; what a target adds above it is mask jitter that no
single field can fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = ((0, 1.5), (1.5, 2.5), (2.5, 3.5), (3.5, 5), (5, 8), (8, 15), (15, 40), (40, 1e9))


def psnr(mse: float) -> float:
    import math

    return 10 * math.log10(255.0**2 / max(mse, 1e-9))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--every", type=int, default=60, help="use every N-th frame")
    ap.add_argument("--halos", default="0,3,5,8")
    args = ap.parse_args()

    import cv2
    import numpy as np

    from synctalk import subject as S
    from synctalk.io.video import iter_frames
    from synctalk.prepare.background import composite_gt, load_plate
    from synctalk.prepare.maskcodec import MaskReader

    sub = S.Subject(args.subject)
    plate = load_plate(sub.path(S.BACKGROUND))
    halos = [int(v) for v in args.halos.split(",")]
    by_band: dict[tuple, list[float]] = {b: [] for b in BANDS}
    by_halo: dict[int, list[float]] = {h: [] for h in halos}
    used = 0
    flicker: dict[str, list[float]] = {"frame": [], **{f"halo {h}": [] for h in halos}}
    previous = None
    with MaskReader(sub.path(S.PARSING)) as reader:
        for i, frame in enumerate(iter_frames(sub.path(S.FRAMES), 0, sub.n_frames)):
            if i % args.every and (i + 1) % args.every:
                continue
            labels = reader[i]
            head = S.head_mask(labels).astype(np.uint8)
            ring = cv2.dilate(head, np.ones((9, 9), np.uint8)) & (1 - cv2.erode(head, np.ones((9, 9), np.uint8)))
            current = {"frame": frame.astype(np.float64),
                       **{f"halo {h}": composite_gt(frame, labels, plate, h).astype(np.float64) for h in halos}}
            if previous is not None and previous[0] == i - 1:
                for key, image in current.items():
                    flicker[key].append(float(((image - previous[1][key]) ** 2).mean(axis=-1)[ring > 0].mean()))
            previous = (i, current)
            if i % args.every:
                continue
            person = (labels != S.LABEL_BACKGROUND).astype(np.uint8)
            dist = cv2.distanceTransform(1 - person, cv2.DIST_L2, 5)
            dist_head = cv2.distanceTransform(1 - head, cv2.DIST_L2, 5)
            beside_head = (labels == S.LABEL_BACKGROUND) & (dist_head <= dist + 0.5)
            sq = ((plate.astype(np.float64) - frame.astype(np.float64)) ** 2).mean(axis=-1)
            for lo, hi in BANDS:
                m = beside_head & (dist > lo) & (dist <= hi)
                if m.any():
                    by_band[(lo, hi)].append(float(sq[m].mean()))
            near = beside_head & (dist <= 8)
            for h in halos:
                target = current[f"halo {h}"]
                by_halo[h].append(float(((target - current["frame"]) ** 2).mean(axis=-1)[near].mean()))
            used += 1
    print(f"{sub.root}: {used} frames (every {args.every}th)")
    print("| px from the person (background beside the head) | frame vs plate PSNR (dB) |")
    print("|---|---:|")
    for (lo, hi), values in by_band.items():
        if values:
            label = f"{lo:g}-{hi:g}" if hi < 1e8 else f"> {lo:g}"
            print(f"| {label} | {psnr(float(np.mean(values))):.1f} |")
    print("| composite_gt halo_px | target vs frame PSNR within 8 px beside the head (dB) |")
    print("|---|---:|")
    for h, values in by_halo.items():
        print(f"| {h} | {psnr(float(np.mean(values))):.1f} |")
    print("| consecutive-frame change within 4 px of the head outline | RMS (levels) |")
    print("|---|---:|")
    for key, values in flicker.items():
        print(f"| {key} | {float(np.sqrt(np.mean(values))):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
