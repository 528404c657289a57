#!/usr/bin/env bash
# Python packages for the GPU machine, carried as wheels in the git-ignored folder .whl/.
#
# The GPU image (Python 3.12, x86-64) already has jax with CUDA, numpy, torch, transformers,
# peft, and what keras needs (absl-py, h5py, ml-dtypes, rich, packaging, regex, sentencepiece,
# tokenizers). Our pipeline modules import only numpy and tomli_w at module level; jax, keras
# and keras_hub are imported inside functions. Missing on the image, hence carried (4.5 MiB):
#   keras 3.15.1, keras-hub 0.32.0, namex, optree (keras' needs) and tomli-w (pipeline.profiles).
# keras-hub's kagglehub and tensorflow-text are not needed: it imports without them.
#
# Here, once (needs pip and the network; add /.whl/ to .git/info/exclude or .gitignore):
#   bash bench/gpu_setup.sh download
# There, from the repository root (installs into $TT_SITE, default /tmp/site, and exports
# PYTHONPATH with that folder and the repository, then prints what imports):
#   source bench/gpu_setup.sh
# bench/run_gpu.sh sources it for you.

_tt_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tt_wheels=(
  keras==3.15.1
  keras-hub==0.32.0
  namex==0.1.0
  optree==0.20.0
  tomli-w==1.2.0
  # the TUI, for bench/tui_latency.py (bench/run_gpu_tui.sh)
  textual==8.2.8
  textual-plotext==1.0.1
  plotext==5.3.2
  markdown-it-py==4.3.0
  mdit-py-plugins==0.7.0
  mdurl==0.1.2
  linkify-it-py==2.2.0
  uc-micro-py==1.0.3
  platformdirs==4.14.7
  nvidia-ml-py==13.615.71
  rich==15.0.0
  gguf==0.19.0
  # the data stage (pipeline.data: validation with pandera)
  pydantic==2.14.3
  pydantic-core==2.50.4
  annotated-types==0.8.0
  typing-inspection==0.4.5
  pandera==0.35.0
  typeguard==4.6.0
  orjson==3.13.0
  jsonlines==4.0.0
)

if [[ "${1:-}" == "download" ]]; then
  set -euo pipefail
  mkdir -p "$_tt_repo/.whl"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$_tt_repo/.whl" "${_tt_wheels[@]}"
  ls -la "$_tt_repo/.whl"
  du -sh "$_tt_repo/.whl"
  exit 0
fi

_tt_site=${TT_SITE:-/tmp/site}
_tt_setup() {
  local found=("$_tt_repo"/.whl/*.whl)
  if [[ ! -e "${found[0]}" ]]; then
    echo "gpu_setup: no wheels in $_tt_repo/.whl (name .whl in run's carry)" >&2
  elif ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$_tt_site" "${found[@]}"; then
    echo "gpu_setup: installing the wheels failed" >&2
    return 1
  fi
  export PYTHONPATH="$_tt_site:$_tt_repo${PYTHONPATH:+:$PYTHONPATH}"
  export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  # What imports, without failing: a missing module shows up here and in the case that needs it.
  python3 - <<'EOF'
import importlib
import sys

mods = (
    "numpy jax jaxlib keras keras_hub tomli_w torch transformers peft pipeline.profiles "
    "pipeline.models.config pipeline.models.gemma3_jax pipeline.models.lora "
    "pipeline.training.step pipeline.training.batches textual textual_plotext gemma_tui.app gguf sentencepiece google.protobuf pandera orjson pipeline.data.checked_stream"
).split()
ok, bad = [], []
for name in mods:
    try:
        mod = importlib.import_module(name)
        ok.append(f"{name} {getattr(mod, '__version__', '')}".strip())
    except Exception as exc:  # report and go on
        bad.append(f"{name}: {type(exc).__name__}: {exc}")
print(f"gpu_setup: python {sys.version.split()[0]}; imports ok: " + ", ".join(ok))
for line in bad:
    print("gpu_setup: MISSING " + line)
EOF
}
_tt_setup
