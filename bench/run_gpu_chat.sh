#!/usr/bin/env bash
# The chat benchmark's GPU part on the device machine: install the carried wheels, then
# bench/chat.py gpu (1B and 270M shapes, random bf16 weights, with and without LoRA).
#
# Device `run` (kind nvidia-h100-x1), carrying the wheels and the tokenizer (both git-ignored):
#   command: bash bench/run_gpu_chat.sh
#   carry:   [".whl", "bench/data/tokenizer.spm"]
# bench/data/tokenizer.spm is the embedded model's tokenizer (workspace/cache/tokenizer/*.spm
# after any `gemma-tui` run). Results come back under $OUT: chat-gpu.json, env.txt.
# Here, afterwards: copy chat-gpu.json to bench/results/ and run `python bench/chat.py render`.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/chat_bench}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi
} >"$OUT/env.txt" 2>&1
# shellcheck source=bench/gpu_setup.sh
source bench/gpu_setup.sh > >(tee -a "$OUT/env.txt") 2>&1
export CHAT_BENCH_COMMAND="bash bench/run_gpu_chat.sh"
python3 bench/chat.py gpu --tokenizer bench/data/tokenizer.spm --out "$OUT" "$@"
rc=$?
echo "run_gpu_chat: exit $rc after ${SECONDS}s"
exit $rc
