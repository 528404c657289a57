"""Load time of the embedded Gemma 3 270M: first load (fresh workspace: assemble the GGUF,
build the tokenizer, dequantize, write the float32 cache) against later loads from the cache.

    uv run python bench/model_load.py          # writes bench/results/model_load.md

Each load runs in a fresh Python process (imports included, as a user pays them).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, os, sys, time
from pathlib import Path
t0 = time.perf_counter()
from pipeline.models.loader import load_model
from pipeline.workspace import Workspace
t1 = time.perf_counter()
m = load_model("embedded", dtype=sys.argv[2], workspace=Workspace(Path(sys.argv[1])))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0}))
"""


def run(ws: str, dtype: str) -> dict[str, float]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, ws, dtype],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise SystemExit(f"load failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    root = Path(__file__).resolve().parent
    rows = []
    with tempfile.TemporaryDirectory() as ws:
        rows.append(("first load, fresh workspace", "bfloat16", run(ws, "bfloat16")))
        for dtype in ("bfloat16", "float32"):
            for i in range(2):
                rows.append((f"from the cache, run {i + 1}", dtype, run(ws, dtype)))
    lines = [
        "# Embedded Gemma 3 270M: load time",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- Command: `uv run python bench/model_load.py`",
        f"- Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, no GPU (JAX_PLATFORMS=cpu)",
        "- Each row is a fresh process: import of pipeline.models.loader, then "
        "`load_model('embedded', dtype)` (keras-hub import, weights, tokenizer). Goal: under 15 s "
        "from the cache.",
        "",
        "| load | dtype | import s | load_model s | total s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, dtype, r in rows:
        lines.append(
            f"| {name} | {dtype} | {r['import_s']:.1f} | {r['load_s']:.1f} | {r['total_s']:.1f} |"
        )
    out = root / "results" / "model_load.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
