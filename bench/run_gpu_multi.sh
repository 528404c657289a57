#!/usr/bin/env bash
# The multi-GPU call (issue 7), for a machine with 2 GPUs (device kind nvidia-h200-x2):
#   command: bash bench/run_gpu_multi.sh
#   carry:   [".whl", "bench/data/tiny-gemma3.gguf"]   (bench/make_tiny_gguf.py writes it)
# 1. bench/train_throughput.py cases a, g1, g2 at global batch 8 x 1024 (1B shape): one GPU
#    against two, written to $OUT/multi_gpu.md (here: bench/results/multi_gpu.md, via
#    `python bench/train_throughput.py --render <files_at>/train_throughput.json`).
# 2. The real trainer on both GPUs through the CLI (a profile with devices = 2, the tiny random
#    GGUF with the real tokenizer, as the embedded package is not there; bf16, 6 steps): its console, log.txt and metrics.jsonl (a memory reading per GPU)
#    come back as $OUT/cli-*.
# NVLink multicast stays off (the machine's NCCL_NVLS_ENABLE=0, kept for every child).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/multi_gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
nvidia-smi -L
# MULTI_SKIP_BENCH=1: only step 2
[ -n "${MULTI_SKIP_BENCH:-}" ] || TT_BUDGET_S=${TT_BUDGET_S:-420} bash bench/run_gpu.sh --cases a,g1,g2 --batch 8
# shellcheck source=bench/gpu_setup.sh
source bench/gpu_setup.sh >/dev/null 2>&1
python3 - <<'PY'
import json
rows = [{"conversations": [{"from": "human", "value": f"What is {i} plus {i}?"},
                           {"from": "gpt", "value": f"{i} plus {i} is {2 * i}."}]}
        for i in range(400)]
open("/tmp/chat.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
open("/tmp/multi.toml", "w").write('''name = "multi-smoke"
[model]
source = "bench/data/tiny-gemma3.gguf"
[train]
batch_size = 8
sequence_length = 256
max_steps = 6
checkpoint_every = 3
loss_chunk_size = 128
devices = 2
''')
PY
GEMMA_TUI_WORKSPACE=/tmp/gt timeout 240 python3 -m gemma_tui train --profile /tmp/multi.toml \
  --data /tmp/chat.jsonl --run-dir /tmp/cli-run >"$OUT/cli-console.txt" 2>&1
echo "cli train: exit $?"
cp /tmp/cli-run/metrics.jsonl "$OUT/cli-metrics.jsonl"
cp /tmp/cli-run/log.txt "$OUT/cli-log.txt"
tail -n 5 "$OUT/cli-console.txt"
