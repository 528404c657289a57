#!/usr/bin/env bash
# The oracle environment: HF transformers + PEFT on a CPU build of torch, used only by the
# tests that prove our GGUF loader, tokenizer and PEFT export against an independent
# implementation. It lives apart from the main (uv) environment because torch must be the
# CPU build: `pip install torch==2.13.0` takes the CPU wheel that CI machines carry on disk,
# while uv would resolve a multi-GB CUDA build.
#
#   bash scripts/make_oracle_env.sh            # creates .venv-oracle (about 1.2 GB, 1-3 min)
#   GEMMA_TUI_ORACLE_PYTHON=.venv-oracle/bin/python pytest ...   # (found automatically)
# Pinned to the versions the oracle tests were proven with (tests/oracle/, tests/oracle_peft/).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-oracle}"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
  echo "oracle environment ready: $dir"; exit 0
fi
python3 -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first, pinned to the CPU build, so nothing below can pull a CUDA torch.
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==2.13.0" "transformers==5.23.0" "peft==0.21.2" "accelerate==1.15.0" "gguf==0.19.0" \
  "sentencepiece==0.2.3" "protobuf==7.36.2" "safetensors==0.8.0" "numpy==2.4.6"
"$dir/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__; print('torch', torch.__version__)"
echo "oracle environment ready: $dir"
