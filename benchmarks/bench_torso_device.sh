#!/usr/bin/env bash
# One device call for the torso stage (see BENCHMARKS.md "Torso"): GPU tests, then the fast-preset benchmark
# on the anchor subject under the baseline head in .carry/nerf_ws (copied: never written in place).
export SYNCTALK_CACHE=$PWD/.carry/cache SYNCTALK_NO_PROGRESS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -m pytest -q tests_gpu/test_torso_gpu.py 2>&1 | tee "$OUT/pytest.txt"
rm -rf /tmp/ws && cp -r .carry/nerf_ws /tmp/ws && chmod -R u+w /tmp/ws
python3 benchmarks/bench_torso.py .carry/anchor --workspace /tmp/ws --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/log.txt"
cp /tmp/ws/torso_model.safetensors /tmp/ws/torso_model.json /tmp/ws/torso_metrics.json "$OUT/" 2>/dev/null
tar czf "$OUT/torso_test.tgz" -C /tmp/ws torso_test 2>/dev/null
ls -la "$OUT"
