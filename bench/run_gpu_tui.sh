#!/usr/bin/env bash
# The Train screen on the GPU machine: bench/tui_latency.py with a real run in the TUI's
# process, key latency while it trains, and SVG screens of the run (VRAM plot included).
#
# The machine has no network and no room for the embedded 270M (250 MB), so the model is a
# tiny random Gemma 3 GGUF with the real tokenizer (bench/make_tiny_gguf.py) and the data the
# Alpaca demo set; the profile is rtx3060-12gb with that model and 300 steps.
#   here:   python bench/make_tiny_gguf.py --out bench/data/tiny-gemma3.gguf
#           cp ../shared/datasets/alpaca_en_demo.json bench/data/
#   device: command: bash bench/run_gpu_tui.sh
#           carry:   [".whl", "bench/data/tiny-gemma3.gguf", "bench/data/alpaca_en_demo.json"]
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tui_gpu}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi
} >"$OUT/env.txt" 2>&1
# shellcheck source=bench/gpu_setup.sh
source bench/gpu_setup.sh > >(tee -a "$OUT/env.txt") 2>&1
export GEMMA_TUI_WORKSPACE=/tmp/tui-ws
export TUI_COMMAND="bash bench/run_gpu_tui.sh"
python3 bench/tui_latency.py --profile rtx3060-12gb --data bench/data/alpaca_en_demo.json \
  --set model.source=bench/data/tiny-gemma3.gguf --set train.epochs= \
  --set train.warmup_ratio= --set train.warmup_steps=10 --set train.max_steps=300 \
  --set train.eval_every=50 --set train.checkpoint_every=100 \
  --screens "$OUT/screens" --results "$OUT/tui_latency_gpu.md" "$@" 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
echo "run_gpu_tui: exit $rc after ${SECONDS}s"
exit $rc
