#!/usr/bin/env bash
# The one command for the GPU machine: install the carried wheels, then every training
# throughput case of bench/train_throughput.py, within one wall-time budget.
#
# Device `run` (kind nvidia-h100-x1, timeout_s 600), carrying the wheels and the tokenized
# alpaca examples (bench/data is git-ignored):
#   command: bash bench/run_gpu.sh
#   carry:   [".whl", "bench/data/alpaca_en_demo.npz"]
# Extra arguments go to train_throughput.py, e.g. `bash bench/run_gpu.sh --cases a,b`.
# TT_BUDGET_S (default 540) is the budget of the whole command, setup included.
# Everything comes back under $OUT: train_throughput.{json,md,log}, cases.jsonl and env.txt.
# Here, afterwards: python bench/train_throughput.py --render <files_at>/train_throughput.json
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/train_throughput}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi
} >"$OUT/env.txt" 2>&1
# A failed wheel install is reported and the run goes on: the torch cases do not need them.
# shellcheck source=bench/gpu_setup.sh
source bench/gpu_setup.sh > >(tee -a "$OUT/env.txt") 2>&1
budget=$((${TT_BUDGET_S:-540} - SECONDS))
export TT_COMMAND="bash bench/run_gpu.sh${*:+ $*}"
python3 bench/train_throughput.py --budget-s "$budget" --out "$OUT" "$@"
rc=$?
echo "run_gpu: exit $rc after ${SECONDS}s"
exit $rc
