#!/usr/bin/env bash
# Head-quality variants on the GPU machine, one device command:
#   bash benchmarks/bench_quality_device.sh "TAG ARGS..." ["TAG ARGS..." ...]
# Each quoted argument is one bench_train_quality.py process (TAG = its output stem, ARGS = its
# --variant / --lips-variant / --stages options); they run concurrently on the one GPU, so their
# train seconds are upper bounds. Common settings from the environment:
#   SUBJ (.carry/anchor_r), HOLDOUT (0.05), EVAL_SAMPLES (0 = the training budget, 16),
#   ALSO_SAMPLES (e.g. 32: the test split again at that budget), SWEEP_TIMEOUT (s, 450), GPU_TESTS (1),
#   REFINE (N: after evaluating, fit the held-out frames' poses to their upper head, N iterations, and
#   evaluate them again: how much of the gap is pose error). A process's ARGS may carry
#   --gt-halo-px N (its training targets and ground truth) and --also-gt-halo-px M (rows *_altgt).
# Steps: the subject's audio stage when audio/features.npy is missing (its audio/ folder comes back as
# $OUT/audio.tar.gz, so a later call can carry it), the fused-kernel GPU tests (point gradients of the
# hash grid included), then the variants; their JSON and logs come back as $OUT/quality.tar.gz, each
# process's render|GT|error PNGs as $OUT/png_TAG.tar.
set -o pipefail
export SYNCTALK_NO_PROGRESS=1 PYTHONUNBUFFERED=1
SUBJ=${SUBJ:-.carry/anchor_r}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/pyav "$OUT" /tmp/q
[ -f .carry/pyav/av.tar.xz ] && tar -xJf .carry/pyav/av.tar.xz -C /tmp/pyav
export PYTHONPATH=$PWD:/tmp/pyav
export SYNCTALK_CACHE=${SYNCTALK_CACHE:-$PWD/.carry/cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ ! -f "$SUBJ/audio/features.npy" ]; then
  start=$(date +%s.%N)
  timeout 200 python3 -m synctalk train "$SUBJ" --stage audio 2>&1 | tail -3
  echo "audio stage wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
  (cd "$SUBJ" && find audio -type f -size -12M -print0 | tar -czf "$OUT/audio.tar.gz" --null -T -)
fi
if [ "${GPU_TESTS:-1}" = 1 ]; then
  timeout 120 python3 -m pytest -q -x tests_gpu/test_nerf_kernels_gpu.py 2>&1 | tail -4
fi
pids=()
for spec in "$@"; do
  read -r tag args <<<"$spec"
  # shellcheck disable=SC2086  # ARGS is a word list on purpose
  timeout "${SWEEP_TIMEOUT:-450}" python3 benchmarks/bench_train_quality.py --subject "$SUBJ" --out /tmp/q \
      --holdout "${HOLDOUT:-0.05}" --light --tag "$tag" --eval-max-samples "${EVAL_SAMPLES:-0}" \
      --also-samples "${ALSO_SAMPLES:-}" --refine-heldout-poses "${REFINE:-0}" $args >"/tmp/q/$tag.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; echo "process $pid exit $?"; done
for spec in "$@"; do
  read -r tag _ <<<"$spec"
  echo "== $tag"; grep -E "Error|error:|Traceback" "/tmp/q/$tag.log" | tail -3
  python3 - "$tag" <<'PY'
import json, sys
tag = sys.argv[1]
try:
    report = json.load(open(f"/tmp/q/{tag}.json"))
except FileNotFoundError:
    sys.exit(print(f"{tag}: no results"))
for name, row in report["models"].items():
    parts = [name, f"train {sum(s['seconds'] for s in row['stages'].values()):.0f}s",
             f"peak {row.get('peak_gib') or 0:.2f}GiB"]
    for key in ("val", "test", "test_s32", "test_s64", "train16", "val_posefit", "test_posefit",
                "val_altgt", "test_altgt"):
        if key in row:
            parts.append(f"{key} {row[key]['psnr']:.2f}/{row[key]['psnr_head']:.2f}")
    regions = row["test"].get("regions", {})
    parts.append("regions " + " ".join(f"{k}:{v['psnr']:.1f}" for k, v in regions.items() if v["psnr"]))
    if "pose_correction_px" in row:
        parts.append("pose " + " ".join(f"{k}={v:.2f}" for k, v in row["pose_correction_px"].items()))
    print(" | ".join(parts))
PY
done
# Numbers and logs in one archive, each process's PNGs in its own (the device returns files <= 16 MiB).
tar -czf "$OUT/quality.tar.gz" -C /tmp --exclude='*.png' q
for spec in "$@"; do
  read -r tag _ <<<"$spec"
  (cd /tmp/q && ls -d "${tag}"_*/ >/dev/null 2>&1 && tar -cf "$OUT/png_$tag.tar" "${tag}"_*/)
done
ls -la "$OUT"
