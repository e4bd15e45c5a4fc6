#!/usr/bin/env bash
# The first `synctalk render` on a machine whose Triton cache is empty, after `synctalk train` primed the
# render kernels (synctalk.render.api.prime_render_kernels), and the same render with the cache wiped
# again (what the first render cost before training primed it). GPU machine, repo root; it has no PyAV,
# so a PyAV wheel's files travel as .carry/pyav/av.tar.xz (see bench_render_device.sh).
# Needs SUBJ with audio/features.npy (run `synctalk train SUBJ --stage audio` first).
#   SUBJ=.carry/anchor_r HEAD_STEPS=200 bash benchmarks/bench_first_render_device.sh
set -o pipefail
export SYNCTALK_NO_PROGRESS=1 PYTHONUNBUFFERED=1
SUBJ=${SUBJ:-.carry/anchor_r}
WS=${WS:-/tmp/first_render_ws}
AUDIO=${AUDIO:-$SUBJ/audio.wav}
mkdir -p /tmp/pyav
[ -f .carry/pyav/av.tar.xz ] && tar -xJf .carry/pyav/av.tar.xz -C /tmp/pyav
export PYTHONPATH=$PWD:/tmp/pyav
wall() { python3 -c "print(round($(date +%s.%N) - $1, 2))"; }
rm -rf ~/.triton/cache "$WS"
start=$(date +%s.%N)
timeout 240 python3 -m synctalk train "$SUBJ" --stage head --workspace "$WS" --set head_steps="${HEAD_STEPS:-200}" 2>&1 \
    | grep -E "render kernels|head stage|test split" | sed 's/^ *//'
echo "train head (${HEAD_STEPS:-200} steps, cold Triton cache) wall $(wall "$start") s"
for label in "primed by training" "cache wiped (unprimed)"; do
  [ "$label" = "cache wiped (unprimed)" ] && rm -rf ~/.triton/cache
  start=$(date +%s.%N)
  timeout 120 python3 -m synctalk render "$SUBJ" --audio "$AUDIO" -o /tmp/first.mp4 --workspace "$WS" 2>&1 | tail -1
  echo "first render, $label: wall $(wall "$start") s"
done
