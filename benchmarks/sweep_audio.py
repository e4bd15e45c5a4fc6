"""Rank sync-model variants on one prepared subject without writing into it.

Each variant is the ``default`` preset plus overrides, trained on the train split (by default with the
last 10 % held out as a validation slice: rank by ``val_within_1``, never by the test numbers, which are
printed beside it only to be reported). One JSON line per variant goes to stdout and to ``--out``.

    python benchmarks/sweep_audio.py SUBJECT_DIR --variant base: --variant jaw:crop=jaw,stack=9 \\
        [--val-fraction 0.1] [--out results.jsonl]

Variants run one after the other in this process (the subject's audio and crops are loaded once per
crop region). Timings of variants that share the GPU with another process are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:field=value,field=value`` -> (name, overrides); values parsed as JSON, else strings."""
    name, _, rest = text.partition(":")
    overrides: dict = {}
    for item in filter(None, rest.split(",")):
        field, _, value = item.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return name, overrides


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subject", type=Path)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:FIELD=VALUE,...")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from synctalk.audio.features import load_subject_arrays
    from synctalk.audio.sync_model import preset, sync_accuracy, train_sync_model
    from synctalk.log import setup_logging

    setup_logging()
    arrays: dict[str, tuple] = {}
    for text in args.variant:
        name, overrides = parse_variant(text)
        cfg = preset(args.preset, **{"val_fraction": args.val_fraction, **overrides})
        if cfg.crop not in arrays:
            arrays[cfg.crop] = load_subject_arrays(args.subject, cfg.crop)
        wav, crops, n_train = arrays[cfg.crop]
        t0 = time.perf_counter()
        model, stats = train_sync_model(wav, crops, n_train, cfg)
        test = sync_accuracy(model, wav, crops, range(n_train, len(crops)), cfg.eval_max_offset)
        row = {"variant": name, "overrides": overrides, "train_seconds": round(stats["seconds"], 1),
               "total_seconds": round(time.perf_counter() - t0, 1),
               "val_within_1": stats.get("val_within_tolerance"), "val_best_step": stats.get("val_best_step"),
               "val_curve": [(v["step"], round(v["within_tolerance"], 3)) for v in stats.get("val_curve", [])],
               "loss_first": round(stats["loss_first"], 3), "loss_last": round(stats["loss_last"], 3),
               "test_within_1": test["within_tolerance"], "test_exact": test["exact"],
               "test_windows": test["windows"], "test_within_1_all": test["within_tolerance_all"],
               **{k: v for k, v in test.items() if k.startswith("within_tolerance_span")},
               "test_offset_histogram": test["offset_histogram"]}
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
