"""How much of the real mouth's movement the audio alone predicts, on a subject's held-out test frames.

A reference for ``synctalk.metrics.mouth_motion``: a ridge regression from each frame's audio to the
real outer-lip height (``synctalk.audio.mouth.lip_height``), fitted on the train split and scored on the
test split as the renders are (Pearson r with the real lip height, std ratio). If this simple model
reaches r ~ 0.5 where a render scores ~ 0, the information is in the audio and the render's audio path
loses it. Two inputs:

- ``mel``: the 80 x 16 mel window of each frame (the audio encoder's input), reduced to its first K
  principal components on the train split;
- ``band``: the 800-3000 Hz log energy (av_sync's audio signal) of the frame and its +-4 neighbours;
- with ``--features``: the audio stage's per-frame AVE features (what the NeRF is fed). The encoder was
  trained on the train split's own frames, so a much higher r on train than on test means its features
  describe the training mouths better than any new audio's (leakage the NeRF can key on).

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
from synctalk.audio.lip_probe import pca, ridge_scores  # noqa: E402
from synctalk.audio.load import load_driving_audio  # noqa: E402
from synctalk.audio.mel import melspectrogram  # noqa: E402
from synctalk.audio.mouth import lip_height  # noqa: E402
from synctalk.audio.windows import frame_windows  # noqa: E402


def baseline_rows(subject: Path, components: tuple[int, ...] = (16, 64, 256), ridge: float = 10.0,
                  features: np.ndarray | None = None) -> list[tuple[str, dict]]:
    """(input name, ridge_scores) rows for a prepared subject; ``features`` [N, D] (the audio stage's
    per-frame AVE features, what the NeRF is fed) add rows of their own."""
    sub = S.Subject(subject)
    y = lip_height(sub.landmarks()).astype(np.float64)
    n = len(y)
    train, test = np.arange(sub.split.n_train), np.arange(sub.split.n_train, n)
    wav = load_driving_audio(sub.path(S.AUDIO), allow_silent=True)
    windows = frame_windows(melspectrogram(wav), n).numpy().reshape(n, -1).astype(np.float64)
    rows = [(f"mel, first {k} principal components", ridge_scores(pca(windows, train, k), y, train, test, ridge))
            for k in components]
    energy = frame_band_energy_db(wav, n).astype(np.float64)
    context = np.stack([np.roll(energy, k) for k in range(-4, 5)], axis=1)
    rows.append(("800-3000 Hz energy, frame +-4", ridge_scores(context, y, train, test, ridge)))
    if features is not None:
        if len(features) != n:
            raise ValueError(f"features cover {len(features)} frames, the subject has {n}")
        feats = np.asarray(features, np.float64)
        for k in components:
            if k <= feats.shape[1]:
                rows.append((f"AVE features, first {k} principal components",
                             ridge_scores(pca(feats, train, k), y, train, test, ridge)))
    return rows


def markdown(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| audio input (ridge, fitted on train) | r train | r test | std ratio test |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['r_train']:.3f} | {r['r_test']:.3f} | {r['std_ratio_test']:.2f} |" for name, r in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--components", default="16,64,256", help="comma list of K principal components")
    ap.add_argument("--ridge", type=float, default=10.0, help="ridge weight (standardised inputs)")
    ap.add_argument("--features", type=Path, default=None,
                    help="per-frame AVE features [N, 512] (.npy: audio/features.npy, or the e2e run's features_f16.npy)")
    args = ap.parse_args(argv)
    features = np.load(args.features, allow_pickle=False) if args.features else None
    rows = baseline_rows(args.subject, tuple(int(v) for v in args.components.split(",")), args.ridge, features)
    sub = S.Subject(args.subject)
    print(f"subject {args.subject}: {sub.split.n_train} train / {sub.n_frames - sub.split.n_train} test frames; "
          "target = real outer-lip height")
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
