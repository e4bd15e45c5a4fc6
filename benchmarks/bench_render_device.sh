#!/usr/bin/env bash
# Render speed on the GPU machine, one device command (it has no PyAV: a PyAV wheel's files travel
# as .carry/pyav/av.tar.xz, unpacked to /tmp; make it with `pip download "av>=19,<20" --no-deps
# --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64`, unzip, `tar -cJ`).
# Carry: .carry/anchor_r (the prepared anchor, figures left out), .carry/pyav, and optionally
# .carry/render_ws (a trained head_model.* [+ torso_model.*]).
#   0. TRAIN=1 (or no head model in $WS): train the audio encoder, the head (fast preset) and the torso
#      (fast preset, TORSO_STEPS steps: render speed does not depend on how long it trained) into $WS;
#   1. GPU tests of the fused shading kernel and march rounds (SKIP_TESTS=1 skips);
#   2. profile_render.py: ms/frame of the engine and of each speed-up switched off (SKIP_PROFILE=1 skips);
#   3. bench_render.py: the render loop at 512^2 with audio features + compositing (no disk) in every
#      mode with a model, and render_audio of 60 s of audio into an H.264 + AAC mp4 in the same process;
#   4. `python -m synctalk render` of the same 60 s in fresh processes: CLI_RUNS (cold = Triton cache
#      wiped first) in head mode, then CLI_MODES (e.g. "torso+portrait") once each; plus the bare cost
#      of a fresh process (python + torch import + CUDA context).
set -o pipefail
export SYNCTALK_NO_PROGRESS=1 PYTHONUNBUFFERED=1
SUBJ=${SUBJ:-.carry/anchor_r}
WS=${WS:-.carry/render_ws}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/pyav "$OUT"
[ -f .carry/pyav/av.tar.xz ] && tar -xJf .carry/pyav/av.tar.xz -C /tmp/pyav
export PYTHONPATH=$PWD:/tmp/pyav
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import av; print('pyav', av.__version__)" || echo "no PyAV: the mp4 steps will be skipped"
if [ "${TRAIN:-0}" = 1 ] || [ ! -f "$WS/head_model.json" ]; then
  mkdir -p "$WS"
  for stage in audio head torso; do
    extra=()
    [ "$stage" = torso ] && extra=(--set "steps=${TORSO_STEPS:-3000}")
    start=$(date +%s.%N)
    timeout 300 python3 -m synctalk train "$SUBJ" --stage $stage --workspace "$WS" "${extra[@]}" 2>&1 | tail -3
    echo "train $stage wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
  done
fi
[ "${SKIP_TESTS:-0}" = 1 ] || timeout 150 python3 -m pytest -q -x tests_gpu/test_render_shade_gpu.py 2>&1 | tail -15
[ "${SKIP_PROFILE:-0}" = 1 ] || timeout 120 python3 benchmarks/profile_render.py --subject "$SUBJ" --workspace "$WS" --out "$OUT" 2>&1 | tail -45
timeout 240 python3 benchmarks/bench_render.py --subject "$SUBJ" --workspace "$WS" --out /tmp/br --no-agreement \
    --modes "${LOOP_MODES:-head,portrait,torso,torso+portrait}" --batches "${BATCHES:-16}" --seconds 60 2>&1 \
    | grep -v '^ ' | tail -12
cp /tmp/br/bench_render.json "$OUT/" 2>/dev/null
python3 - <<'PY'
import time
t = time.perf_counter()
import torch
a = time.perf_counter()
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
print(f"fresh process: import torch {a - t:.2f} s, CUDA context {time.perf_counter() - a:.2f} s")
PY
start=$(date +%s.%N); python3 -c "import torch; torch.zeros(1, device='cuda')"
echo "fresh process, python + import torch + CUDA context + exit: $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
cli() {  # label, extra args
  local label=$1; shift
  local start=$(date +%s.%N)
  timeout 90 python3 -m synctalk render "$SUBJ" --audio /tmp/bench_render_clip.wav -o /tmp/cli.mp4 \
      --workspace "$WS" --batch 16 "$@" 2>&1 | tail -1
  echo "cli $label wall $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
}
for run in ${CLI_RUNS:-warm warm warm}; do
  [ "$run" = cold ] && rm -rf ~/.triton/cache
  cli "head $run"
done
for mode in ${CLI_MODES:-torso+portrait}; do
  flags=()
  [[ $mode == *torso* ]] && flags+=(--torso)
  [[ $mode == *portrait* ]] && flags+=(--portrait)
  cli "$mode warm" "${flags[@]}"
done
python3 - <<'PY'
import av
with av.open("/tmp/cli.mp4") as c:
    print("mp4 streams:", [(s.type, s.frames, float(s.duration * s.time_base) if s.duration else None) for s in c.streams])
PY
cp "$WS"/head_model.json "$WS"/torso_model.json "$WS"/metrics.json "$WS"/torso_metrics.json "$OUT/" 2>/dev/null
ls -la "$OUT"
