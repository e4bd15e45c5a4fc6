"""How much of the real mouth's movement the audio alone predicts, on a subject's held-out test frames.

A reference for ``synctalk.metrics.mouth_motion``: a ridge regression from each frame's audio to the
real outer-lip height (``synctalk.audio.mouth.lip_height``), fitted on the train split and scored on the
test split as the renders are (Pearson r with the real lip height, std ratio). If this simple model
reaches r ~ 0.5 where a render scores ~ 0, the information is in the audio and the render's audio path
loses it. Two inputs:

- ``mel``: the 80 x 16 mel window of each frame (the audio encoder's input), reduced to its first K
  principal components on the train split;
- ``band``: the 800-3000 Hz log energy (av_sync's audio signal) of the frame and its +-4 neighbours.

CPU, seconds: ``.venv/bin/python benchmarks/bench_audio_lip_baseline.py --subject SUBJECT``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synctalk import subject as S  # noqa: E402
from synctalk.audio.av_sync import frame_band_energy_db  # noqa: E402
from synctalk.audio.load import load_driving_audio  # noqa: E402
from synctalk.audio.mel import melspectrogram  # noqa: E402
from synctalk.audio.mouth import lip_height  # noqa: E402
from synctalk.audio.windows import frame_windows  # noqa: E402


def ridge_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, lam: float) -> dict:
    """Standardise on train, fit ridge on train, report r on train and test and the test std ratio."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
    z = (x - mu) / sd
    target = y[train] - y[train].mean()
    w = np.linalg.solve(z[train].T @ z[train] + lam * np.eye(z.shape[1]), z[train].T @ target)
    pred = z @ w + y[train].mean()
    return {"r_train": float(np.corrcoef(pred[train], y[train])[0, 1]),
            "r_test": float(np.corrcoef(pred[test], y[test])[0, 1]),
            "std_ratio_test": float(pred[test].std() / y[test].std())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--components", default="16,64,256", help="comma list of K for the mel input")
    ap.add_argument("--ridge", type=float, default=10.0, help="ridge weight (standardised inputs)")
    args = ap.parse_args(argv)

    sub = S.Subject(args.subject)
    y = lip_height(sub.landmarks()).astype(np.float64)
    n = len(y)
    train, test = np.arange(sub.split.n_train), np.arange(sub.split.n_train, n)
    wav = load_driving_audio(sub.path(S.AUDIO), allow_silent=True)
    windows = frame_windows(melspectrogram(wav), n).numpy().reshape(n, -1).astype(np.float64)
    centred = windows - windows[train].mean(0)
    _, _, vt = np.linalg.svd(centred[train], full_matrices=False)
    rows = []
    for k in (int(v) for v in args.components.split(",")):
        rows.append((f"mel, first {k} principal components", ridge_scores(centred @ vt[:k].T, y, train, test, args.ridge)))
    energy = frame_band_energy_db(wav, n).astype(np.float64)
    context = np.stack([np.roll(energy, k) for k in range(-4, 5)], axis=1)
    rows.append(("800-3000 Hz energy, frame +-4", ridge_scores(context, y, train, test, args.ridge)))

    print(f"subject {args.subject}: {len(train)} train / {len(test)} test frames; target = real outer-lip height")
    print("| audio input (ridge, fitted on train) | r train | r test | std ratio test |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['r_train']:.3f} | {r['r_test']:.3f} | {r['std_ratio_test']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
