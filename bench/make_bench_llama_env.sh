#!/usr/bin/env bash
# The llama.cpp baseline for bench/export.py: llama-cpp-python in its own virtual environment,
# compiled from source for this CPU (PyPI has only the sdist for Linux x86_64).
#
#   bash bench/make_bench_llama_env.sh              # creates .venv-bench-llama (~10-20 min on 2 cores)
#   bash bench/make_bench_llama_env.sh DIR          # somewhere else (bench/export.py --llama-python DIR/bin/python)
#
# Only a benchmark needs it: neither the TUI nor the export uses llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-bench-llama}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama.cpp bench environment ready: $dir"; exit 0
fi
echo "[bench-llama] creating $dir"
python3 -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "[bench-llama] building llama-cpp-python $version from source (GGML_NATIVE=ON, CPU only)"
# GGML_NATIVE=ON: -march=native (AVX2/AVX-512 where the CPU has them), as a local build of
# llama.cpp would be; no BLAS, no GPU backend.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$dir/bin/python" -m pip install --disable-pip-version-check --no-cache-dir \
  "llama-cpp-python==$version"
"$dir/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
echo "llama.cpp bench environment ready: $dir"
