#!/usr/bin/env bash
# The export environment: litert-torch (PyTorch -> TFLite with prefill/decode signatures and a
# KV cache), the MediaPipe .task bundler, LiteRT-LM (.litertlm builder and Python runtime) and
# the ai-edge-litert interpreter, on a CPU build of torch.
#
# It lives apart from the main (uv) environment because litert-torch imports TensorFlow (which
# the main environment must never carry) and needs torch; export runs in it as a subprocess
# (pipeline/export/worker.py) that streams its stages back as JSON lines.
#
#   bash scripts/make_export_env.sh              # creates .venv-export (about 4.5 GB, 3-6 min)
#   bash scripts/make_export_env.sh DIR          # somewhere else (GEMMA_TUI_EXPORT_PYTHON=DIR/bin/python)
#
# Pins proven together on Python 3.11 (research/export_tflite_mediapipe.md): torch 2.13.0 CPU
# first (otherwise pip resolves a multi-GB CUDA build), litert-torch 0.10.0 (ai-edge-torch 0.7.x
# is a stub or needs torch<2.10), tensorflow 2.21 (litert-torch imports it without declaring
# it), mediapipe 0.10.35 (1.x removed the genai bundler), litert-lm 0.18.1.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-export}"
check='import torch, litert_torch, tensorflow, ai_edge_litert, litert_lm, sentencepiece
from mediapipe.tasks.python.genai import bundler
from litert_torch.generative.utilities import converter, litertlm_builder'
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" 2>/dev/null; then
  echo "export environment ready: $dir"; exit 0
fi
step() { echo "[export-env] $*"; }
step "creating $dir (python3 -m venv)"
python3 -m venv "$dir"
pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
step "torch 2.13.0 (CPU build) first, so nothing below can pull a CUDA torch"
"${pip[@]}" "torch==2.13.0"
step "litert-torch 0.10.0, tensorflow 2.21, mediapipe 0.10.35, litert-lm 0.18.1 (largest step)"
"${pip[@]}" "torch==2.13.0" "litert-torch==0.10.0" "tensorflow==2.21.*" "mediapipe==0.10.35" \
  "litert-lm-api==0.18.1" "litert-lm-builder==0.18.1" "sentencepiece==0.2.3" "psutil"
step "checking the imports"
"$dir/bin/python" -c "$check
assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print('torch', torch.__version__)" 2>&1 | grep -v -i -E "cuda|cuinit|tensorflow/|oneDNN|cutlass|E0000|W0000|absl" || true
"$dir/bin/python" -c "$check" >/dev/null 2>&1
echo "export environment ready: $dir"
