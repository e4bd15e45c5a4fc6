#!/usr/bin/env bash
# Render speed on the GPU machine, one device command (it has no PyAV: a PyAV wheel's files travel
# as .carry/pyav/av.tar.xz, unpacked to /tmp; make it with `pip download av --python-version 3.12
# --only-binary=:all: --platform manylinux_2_28_x86_64`, unzip, `tar -cJ`).
# Carry: .carry/anchor_r (the prepared anchor without the files rendering does not read, plus
# audio/ave.safetensors), .carry/render_ws (head_model.*), .carry/pyav.
#   1. GPU tests of the fused shading kernel and march rounds;
#   2. profile_render.py: ms/frame of the engine and of each speed-up switched off;
#   3. bench_render.py: the render loop at 512^2 with audio features + compositing (no disk), and
#      render_audio of 60 s of audio into an H.264 + AAC mp4;
#   4. `python -m synctalk render` of the same 60 s twice in fresh processes (first: cold Triton cache).
set -o pipefail
export SYNCTALK_NO_PROGRESS=1 PYTHONUNBUFFERED=1
SUBJ=${SUBJ:-.carry/anchor_r}
WS=${WS:-.carry/render_ws}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/pyav "$OUT"
[ -f .carry/pyav/av.tar.xz ] && tar -xJf .carry/pyav/av.tar.xz -C /tmp/pyav
export PYTHONPATH=$PWD:/tmp/pyav
python3 -c "import av; print('pyav', av.__version__)" || echo "no PyAV: the mp4 steps will be skipped"
timeout 150 python3 -m pytest -q -x tests_gpu/test_render_shade_gpu.py 2>&1 | tail -15
timeout 120 python3 benchmarks/profile_render.py --subject "$SUBJ" --workspace "$WS" --out "$OUT" 2>&1 | tail -45
timeout 200 python3 benchmarks/bench_render.py --subject "$SUBJ" --workspace "$WS" --out /tmp/br --no-agreement \
    --modes head,portrait --batches 16,32 --seconds 60 2>&1 | tail -40
cp /tmp/br/bench_render.json "$OUT/" 2>/dev/null
for run in ${CLI_RUNS:-cold warm}; do
  [ "$run" = cold ] && rm -rf ~/.triton/cache
  start=$(date +%s.%N)
  timeout 90 python3 -m synctalk render "$SUBJ" --audio /tmp/bench_render_clip.wav -o /tmp/cli.mp4 \
      --workspace "$WS" --batch 16 2>&1 | tail -2
  echo "cli $run wall $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
done
python3 - <<'PY'
import av
with av.open("/tmp/cli.mp4") as c:
    print("mp4 streams:", [(s.type, s.frames, float(s.duration * s.time_base) if s.duration else None) for s in c.streams])
PY
