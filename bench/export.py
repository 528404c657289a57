"""Export benchmark: litert-torch conversion (time, peak RSS, file sizes) per quantization, then
CPU decode speed of the bundles (LiteRT-LM on .litertlm and .task, the export worker's
interpreter loop on .tflite) beside llama.cpp on a Q4_K_M GGUF of the same weights.

    .venv/bin/python bench/export.py                                  # 270M, all six quants
    .venv/bin/python bench/export.py --quant dynamic_int8,fp16        # a subset
    .venv/bin/python bench/export.py --model tiny                     # smoke test (~1 min/quant)
    .venv/bin/python bench/export.py --model 1b --quant dynamic_int8  # ALONE on a 24 GiB machine

Models (``--model``):

* ``270m``: the embedded Gemma 3 270M. ``load_model("embedded", dtype="float32")`` (the
  Q4_K_M GGUF dequantized), written by ``save_hf_checkpoint``: the export's own path. The
  llama.cpp row runs that same GGUF.
* ``1b`` / ``tiny``: random weights of that shape (no download): a random F16 GGUF
  (``bench/make_tiny_gguf.py``'s writer, the real tokenizer), its tensors written as the
  Hugging Face checkpoint (``--hf-dtype``, bfloat16 by default for 1b: half the disk, and the
  shape the research measured), and the GGUF quantized to Q4_K_M by llama.cpp for its row.
  Speed does not depend on the values; greedy agreement on random weights means little.

Per quantization the export worker (``pipeline/export/worker.py``, in ``.venv-export``) runs a
plan with ``formats = task, litertlm, tflite`` and no verification, under ``/usr/bin/time -v``;
its JSON events give each stage's seconds and the process's peak RSS. Then each runtime runs in
a fresh process (``bench/export_runtime.py``), 2 threads, greedy, the same prompt ids, exactly
``--new-tokens`` tokens (stop tokens ignored), four times; the best warm run is reported.

Environments: ``.venv-export`` (``bash scripts/make_export_env.sh``) and, for llama.cpp,
``.venv-bench-llama`` (``bash bench/make_bench_llama_env.sh``; compiled from source, 10-20
minutes on 2 cores). Without the latter the llama.cpp row is skipped.

Results go to ``bench/results/export.json`` (merged: a run updates only its model and quants)
and ``bench/results/export.md`` (rendered from the whole JSON after every step, so an
interrupted run keeps what it measured). Bundles are deleted after their measurements unless
``--keep``; the prepared checkpoints and GGUFs stay in ``bench/data/export/<model>/`` for the
next run (``--fresh`` rebuilds them).

Memory: the 1B conversion peaks near 20-21 GiB and takes 6-10 minutes per quantization. It
must run alone on a 24 GiB machine; the script refuses to start a conversion whose estimate
(``pipeline.export.options.estimate_export``) exceeds MemAvailable unless ``--no-memory-check``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_host import cpu_model

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS_JSON = REPO / "bench" / "results" / "export.json"
RESULTS_MD = REPO / "bench" / "results" / "export.md"
DATA = REPO / "bench" / "data" / "export"
RUNTIME = REPO / "bench" / "export_runtime.py"
EXPORT_PYTHON = REPO / ".venv-export" / "bin" / "python"
LLAMA_PYTHON = REPO / ".venv-bench-llama" / "bin" / "python"
MARK_RUNTIME = "@@bench-export@@ "

QUANTS = (
    "none",
    "fp16",
    "dynamic_int8",
    "weight_only_int8",
    "dynamic_int4_block32",
    "dynamic_int4_block128",
)
MODELS = ("270m", "1b", "tiny")
DEFAULT_QUANTS = {
    "270m": QUANTS,
    "tiny": QUANTS,
    "1b": ("dynamic_int8", "dynamic_int4_block32"),
}
RUNTIMES = ("litertlm", "task", "interp", "llama")
USER_TEXT = (
    "Explain in a few short paragraphs how a small language model can run on a phone. "
    "Say what quantization does to the weights and to the quality of the answers, why the "
    "key-value cache matters while the model generates text, and what limits the speed of "
    "each new token on a laptop processor with only two cores. Finish with one practical tip "
    "for someone who wants to try it tonight."
)
SEED = 0


# --------------------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[bench-export {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f}"


def gib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**30:.2f}"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^flags\s*:(.*)$", text, re.M)
        have = set(found.group(1).split()) if found else set()
        flags = " ".join(
            f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "f16c") if f in have
        )
    except (OSError, AttributeError):
        pass
    try:
        free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout
        mem_total = next(ln.split()[1] for ln in free.splitlines() if ln.startswith("Mem:"))
    except (OSError, StopIteration, IndexError):
        mem_total = "?"
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    return {
        "nproc": nproc,
        "mem_total_gib": mem_total,
        "cpu": cpu,
        "cpu_flags": flags,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_busy_s() -> float:
    """CPU seconds all processes have been busy since boot (/proc/stat, every core)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    ticks = [int(x) for x in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class OtherLoad:
    """``with OtherLoad() as w:`` around a measured child process: ``w.cores`` is the CPU
    that other processes used meanwhile (cores on average: the machine's busy time less what
    this script's finished children used), so a contended number can be recognised."""

    def __enter__(self) -> OtherLoad:
        self.t0, self.b0, self.c0 = time.perf_counter(), _cpu_busy_s(), _children_cpu_s()
        self.cores = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        busy = _cpu_busy_s() - self.b0
        ours = _children_cpu_s() - self.c0
        self.cores = max(0.0, (busy - ours) / wall) if wall > 0 else 0.0


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` cores over
    a 3 s sample; returns the last sample."""
    deadline = time.perf_counter() + max_wait
    while True:
        with OtherLoad() as w:
            time.sleep(3)
        if w.cores < threshold or time.perf_counter() >= deadline:
            return w.cores
        log(f"  other processes use {w.cores:.1f} cores; waiting for a quieter machine")
        time.sleep(12)


# --------------------------------------------------------------------------- prepare (child)


def prepare_child(model: str, folder: Path, hf_dtype: str) -> None:
    """Runs in its own process (``--_prepare``): writes ``folder/hf`` (Hugging Face checkpoint
    with tokenizer.model) and, for the random shapes, ``folder/<model>-f16.gguf``."""
    from pipeline.export.hf_checkpoint import hf_config, save_hf_checkpoint, write_safetensors

    hf_dir = folder / "hf"
    if model == "270m":
        from pipeline.models.loader import load_model

        start = time.perf_counter()
        m = load_model("embedded", dtype="float32")
        log(f"loaded the embedded 270M in {time.perf_counter() - start:.1f} s")
        save_hf_checkpoint(m.backbone, hf_dir, tokenizer_proto=m.tokenizer.proto)
        return
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from make_tiny_gguf import write_tiny_gguf

    from pipeline.models.config import ARCH_1B, ARCH_TINY
    from pipeline.models.gguf_weights import check_gguf_tensors, gemma3_arch, hf_tensors, read_gguf
    from pipeline.models.tokenizer import load_tokenizer

    arch = {"1b": ARCH_1B, "tiny": ARCH_TINY}[model]
    gguf_path = folder / f"{model}-f16.gguf"
    start = time.perf_counter()
    write_tiny_gguf(gguf_path, arch=arch, seed=SEED, name=f"Random Gemma 3 {model}")
    log(f"wrote {gguf_path.name} in {time.perf_counter() - start:.1f} s")
    g = read_gguf(gguf_path)
    arch = gemma3_arch(g)
    check_gguf_tensors(g, arch)
    if hf_dtype == "bfloat16":
        import ml_dtypes

        dtype: Any = ml_dtypes.bfloat16
    else:
        dtype = np.dtype(hf_dtype)
    state = {name: value.astype(dtype) for name, value in hf_tensors(g, arch)}
    del g
    hf_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(hf_dir / "model.safetensors", state, metadata={"format": "pt"})
    del state
    (hf_dir / "config.json").write_text(json.dumps(hf_config(arch, hf_dtype), indent=2) + "\n")
    (hf_dir / "tokenizer.model").write_bytes(load_tokenizer().proto)


def prepare(model: str, folder: Path, hf_dtype: str, fresh: bool) -> tuple[Path, Path | None]:
    """(HF checkpoint folder, Q4_K_M GGUF or None) for ``model``, made once."""
    hf_dir = folder / "hf"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (hf_dir / "model.safetensors").is_file() or not (hf_dir / "tokenizer.model").is_file():
        log(f"preparing the {model} checkpoint in {hf_dir}")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--_prepare", model, str(folder), "--hf-dtype", hf_dtype],
            check=True,
            cwd=REPO,
            env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        )
        log(f"prepared in {time.perf_counter() - start:.1f} s")
    if model == "270m":
        from pipeline.models.embedded import embedded_gguf_path

        return hf_dir, embedded_gguf_path()
    q4 = folder / f"{model}-q4_k_m.gguf"
    if not q4.is_file() and LLAMA_PYTHON.exists():
        res = run_runtime(
            LLAMA_PYTHON, "quantize", {"model": str(folder / f"{model}-f16.gguf"), "out": str(q4)}
        )
        if "error" in res:
            log(f"llama.cpp quantize failed: {res['error']}")
            return hf_dir, None
        log(f"quantized to {q4.name} ({mb(res['bytes'])} MB) in {res['seconds']:.1f} s")
    return hf_dir, q4 if q4.is_file() else None


def prompt_ids(hf_dir: Path) -> list[int]:
    from pipeline.export.options import TEMPLATE
    from pipeline.models.tokenizer import BOS_ID, GemmaTokenizer

    tok = GemmaTokenizer.from_file(hf_dir / "tokenizer.model")
    text = TEMPLATE["user_prefix"] + USER_TEXT + TEMPLATE["user_suffix"] + TEMPLATE["model_prefix"]
    return [BOS_ID, *tok.encode(text)]


def decode_ids(hf_dir: Path, ids: list[int] | None) -> str | None:
    if ids is None:
        return None
    from pipeline.models.tokenizer import GemmaTokenizer

    return GemmaTokenizer.from_file(hf_dir / "tokenizer.model").decode(ids)


# --------------------------------------------------------------------------- conversion


def convert(
    model: str, quant: str, hf_dir: Path, qdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run the export worker on one plan; returns the conversion record."""
    from pipeline.export.env import worker_environ
    from pipeline.export.options import QUANT_LABEL, START_TOKEN, STOP_TOKENS, TEMPLATE
    from pipeline.export.worker import MARK

    if qdir.exists():
        shutil.rmtree(qdir)
    qdir.mkdir(parents=True)
    name = f"{model}-{QUANT_LABEL[quant]}"
    plan = {
        "hf_dir": str(hf_dir),
        "work_dir": str(qdir),
        "name": name,
        "quant": quant,
        "prefill_lens": [args.prefill],
        "kv_len": args.kv_len,
        "formats": ["task", "litertlm", "tflite"],
        "tokenizer": str(hf_dir / "tokenizer.model"),
        "template": TEMPLATE,
        "start_token": START_TOKEN,
        "stop_tokens": list(STOP_TOKENS),
        "stop_ids": [1, 106],
        "verify": None,
    }
    plan_path = qdir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    time_file = qdir / "time-v.txt"
    cmd = [str(args.export_python), "-m", "pipeline.export.worker", str(plan_path)]
    if Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", "-o", str(time_file), *cmd]
    rec: dict[str, Any] = {"stages": {}, "files": {}, "name": name}
    rec["others_before"] = wait_quiet(args.quiet_wait)
    start = time.perf_counter()
    with OtherLoad() as load, open(qdir / "worker.log", "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=worker_environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if not line.startswith(MARK):
                continue
            event = json.loads(line[len(MARK) :])
            kind = event.get("event")
            if kind == "hello":
                rec["versions"] = event.get("versions", {})
            elif kind == "log":
                rec.setdefault("log", []).append(event.get("message"))
                log(f"  worker: {event.get('message')}")
            elif kind == "stage":
                stage, status = event["stage"], event.get("status")
                if status == "done":
                    rec["stages"][stage] = {
                        "seconds": event.get("seconds"),
                        "peak_rss": event.get("peak_rss"),
                    }
                    if "bytes" in event:
                        rec["files"][Path(event["file"]).suffix.lstrip(".")] = event["bytes"]
                    log(
                        f"  {stage}: {event.get('seconds', 0):.1f} s, peak RSS "
                        f"{gib(event.get('peak_rss'))} GiB"
                    )
                elif status == "failed":
                    rec["error"] = f"{stage}: {event.get('error')}"
                    log(f"  {stage} FAILED: {event.get('error')}")
            elif kind == "done":
                rec["peak_rss"] = event.get("peak_rss")
        code = proc.wait()
    rec["wall_s"] = time.perf_counter() - start
    rec["others_cores"] = load.cores
    rec["exit_code"] = code
    if code != 0 and "error" not in rec:
        rec["error"] = f"worker exited with {code} (killed by the OOM killer?)"
    tflite = qdir / f"{name}.tflite"
    if tflite.is_file():
        rec["files"]["tflite"] = tflite.stat().st_size
    if time_file.is_file():
        text = time_file.read_text(errors="replace")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if m:
            rec["time_v_max_rss"] = int(m.group(1)) * 1024
        m = re.search(r"Elapsed \(wall clock\) time.*: (.+)", text)
        if m:
            rec["time_v_elapsed"] = m.group(1).strip()
    st = rec["stages"]
    if "load" in st and "convert" in st:
        rec["convert_s"] = st["load"]["seconds"] + st["convert"]["seconds"]
    peaks = [v.get("peak_rss") or 0 for v in st.values()]
    rec["peak_rss"] = max([rec.get("peak_rss") or 0, rec.get("time_v_max_rss") or 0, *peaks])
    return rec


# --------------------------------------------------------------------------- runtimes


def run_runtime(python: Path, mode: str, spec: dict[str, Any], timeout: float = 1800) -> dict:
    """``export_runtime.py MODE SPEC`` under ``python``; its result or ``{"error": ...}``."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    load = OtherLoad()
    try:
        with load:
            proc = subprocess.run(
                [str(python), str(RUNTIME), mode, spec_path],
                capture_output=True,
                text=True,
                errors="replace",
                cwd=REPO,
                env=env,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(spec_path)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK_RUNTIME):
            res = json.loads(line[len(MARK_RUNTIME) :])
            res["process_wall_s"] = time.perf_counter() - start
            res["others_cores"] = load.cores
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def measure_bundles(
    qdir: Path, name: str, ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = {
        "ids": ids,
        "text": USER_TEXT,
        "user_text": USER_TEXT,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "kv_len": args.kv_len,
        "cache_dir": str(qdir / ".lm-cache"),
        "runs": args.runs,
    }
    plan = [
        ("litertlm", "litert_lm", qdir / f"{name}.litertlm"),
        ("task", "litert_lm", qdir / f"{name}.task"),
        ("interp", "interp", qdir / f"{name}.tflite"),
    ]
    for key, mode, path in plan:
        if key not in args.runtimes:
            continue
        if not path.is_file():
            out[key] = {"error": f"{path.name} missing"}
            continue
        log(f"  {key}: {mode} on {path.name}")
        wait_quiet(args.quiet_wait)
        res = run_runtime(args.export_python, mode, {**base, "model": str(path)})
        out[key] = res
        if "error" in res:
            log(f"  {key} FAILED: {res['error'][:300]}")
        else:
            log(
                f"  {key}: decode {num(res.get('decode_tok_s'))} tok/s, TTFT "
                f"{num(res.get('ttft_s'), '{:.3f}')} s, RSS {gib(res.get('rss_peak'))} GiB"
            )
    return out


def measure_llama(gguf: Path, ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "model": str(gguf),
        "ids": ids,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "kv_len": args.kv_len,
        "runs": args.runs,
    }
    log(f"llama.cpp on {gguf.name}")
    wait_quiet(args.quiet_wait)
    res = run_runtime(args.llama_python, "llama", spec)
    res["file"] = gguf.name
    res["bytes"] = gguf.stat().st_size
    if "error" in res:
        log(f"  llama.cpp FAILED: {res['error'][:300]}")
    else:
        log(
            f"  llama.cpp: decode {num(res.get('decode_tok_s'))} tok/s, TTFT "
            f"{num(res.get('ttft_s'), '{:.3f}')} s"
        )
    return res


# --------------------------------------------------------------------------- results


def merge_best(old: dict[str, Any], new: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """``new`` (one quant's record) keeping, from an earlier run of the script, what was
    measured faster: the conversion with the lower ``convert_s`` and, per runtime, the result
    with the higher decode tok/s (a slower repeat is another process taking a core on this
    shared machine). Each kept part carries ``from_run`` with its date. ``fresh``: ``new``."""
    if fresh or not old:
        return new
    out = dict(new)
    oc, nc = old.get("convert") or {}, new.get("convert") or {}
    if (
        "error" not in oc
        and oc.get("convert_s")
        and (nc.get("error") or (nc.get("convert_s") or 1e18) > oc["convert_s"])
    ):
        out["convert"] = {**oc, "from_run": oc.get("from_run") or old.get("date") or "earlier"}
    runtimes = dict(new.get("runtimes") or {})
    for key, prev in (old.get("runtimes") or {}).items():
        cur = runtimes.get(key)
        if "error" in prev or not prev.get("decode_tok_s"):
            continue
        if cur is None or "error" in cur or (cur.get("decode_tok_s") or 0) < prev["decode_tok_s"]:
            runtimes[key] = {
                **prev,
                "from_run": prev.get("from_run") or old.get("date") or "earlier",
            }
            if key == "litertlm":
                out["reply_litertlm"] = old.get("reply_litertlm")
            if key == "interp":
                out["reply_interp"] = old.get("reply_interp")
    if runtimes:
        out["runtimes"] = runtimes
    out["date"] = new.get("date")
    return out


def load_results() -> dict[str, Any]:
    if RESULTS_JSON.is_file():
        return json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    return {"models": {}}


def save_results(results: dict[str, Any]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    text = json.dumps(results, indent=1, default=str)
    # one line per list of numbers (token ids), not one line per number
    text = re.sub(
        r"\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(RESULTS_JSON)
    RESULTS_MD.write_text(render(results), encoding="utf-8")


def common_prefix(a: list[int] | None, b: list[int] | None) -> int | None:
    if not a or not b:
        return None
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


NOTES = {
    "270m": (
        "The weights are the embedded GGUF's, dequantized, so the float32 and float16 bundles "
        "are the same function as llama.cpp's Q4_K_M: their greedy text equals llama.cpp's "
        "(last table). This model answers the chat prompt by echoing it (llama.cpp's own "
        "`create_completion` does the same), so the replies say nothing about quality beyond "
        "agreement.",
        "Run-to-run noise on this shared VM is about ±20 % even with the machine otherwise idle "
        "(the same bundle measured 35-53 tok/s in separate quiet runs); .task and .litertlm hold "
        "the same model and differ only by that noise.",
        "fp16 and weight_only_int8 are dequantized to float32 at load by LiteRT-LM's CPU "
        "backend (4-5.6 GiB RSS, TTFT ~0.7-0.9 s, decode slower than the float32 bundle); "
        "dynamic_int8 and dynamic_int4 are the CPU formats.",
        "No all-zero weight rows in these weights: `fix_zero_rows` changed nothing for INT4.",
    ),
    "1b": (
        "Random weights (a seeded random F16 GGUF written by bench/make_tiny_gguf.py's writer; "
        "the HF checkpoint holds the same values in bfloat16, the Q4_K_M GGUF is llama.cpp's "
        "quantization of that F16 file). Speed does not depend on the values; agreement does, "
        "and means little here.",
        "The conversion peaks near 20-21 GiB (research §4): run it alone.",
    ),
    "tiny": ("Smoke test of the script; timings of a model this small are mostly overhead.",),
}

TITLES = {
    "270m": "Gemma 3 270M (embedded weights: the Q4_K_M GGUF dequantized to float32)",
    "1b": "Gemma 3 1B shape (random weights)",
    "tiny": "Tiny Gemma 3 (random weights, 6 layers, hidden 64, real 262k vocabulary)",
}


CONTENDED = 0.3
"""Cores used by other processes during a measurement from which it is marked contended."""


def val(r: dict[str, Any], key: str, fmt: str = "{:.1f}") -> str:
    """``r[key]`` formatted, with * when the measurement ran contended."""
    text = num(r.get(key), fmt)
    contended = (r.get("others_cores") or 0.0) >= CONTENDED
    return text + ("\\*" if contended and text != "—" else "")


def todo(model: str, quant: str) -> str:
    return (
        f"not measured yet: run `.venv/bin/python bench/export.py --model {model} --quant {quant}`"
    )


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Export: conversion and CPU decode (litert-torch → TFLite / .task / .litertlm)",
        "",
        "Written by `bench/export.py` (see its docstring); raw numbers in "
        "`bench/results/export.json`. Each model section lists its own command, machine and "
        "date.",
        "",
        "How it is measured:",
        "",
        "- **Conversion**: the export worker (`python -m pipeline.export.worker plan.json` in "
        "`.venv-export`) on a Hugging Face checkpoint, prefill signature 128, KV cache 1280, mask "
        "as input, transposed KV (Google's Gemma 3 settings), formats .task + .litertlm + "
        ".tflite, no verification. *convert s* = the worker's `load` + `convert` stages (the "
        "litert-torch part); *wall s* = the whole worker process (imports, both bundles). "
        "*peak RSS* = the worker's peak (its `peak_rss` events, `ru_maxrss`, and `/usr/bin/time "
        "-v`). INT4 quants get `worker.fix_zero_rows` (all-zero weight rows replaced with 1e-6 "
        "noise; XNNPACK refuses a zero INT4 scale).",
        "- **Decode**: each runtime in a fresh process, CPU, 2 threads, greedy, the same prompt "
        "(the Gemma 3 turn template around one user message), exactly N new tokens (stop tokens "
        "ignored), several runs per process (*runs* below). Reported: the best warm run (all "
        "but the first; highest tok/s, lowest TTFT), and across invocations of the script the "
        "faster result per runtime (the earlier one is labelled with its date; "
        "`--fresh-results` replaces instead). On a shared 2-core machine a slower repeat is "
        "another process taking a core, not the runtime. *TTFT* = time to "
        "first token: from the start of the prompt to the first generated token (prefill + the "
        "first logits). *decode tok/s* = the tokens after the first over the time after the "
        "first. LiteRT-LM: `litert_lm.Benchmark` (the engine's own timers; prefill tokens = the "
        "prompt's length) on the .litertlm and on the .task. Interpreter: the worker's "
        "`TfliteLoop` (`ai_edge_litert`, XNNPACK, KV cache copied in and out of Python every "
        "step) on the .tflite. llama.cpp: `llama-cpp-python` (built from source with "
        "`GGML_NATIVE=ON`, `bash bench/make_bench_llama_env.sh`), the same prompt ids, argmax of "
        "the logits after each `eval`.",
        "- **Background load**: before each measurement the script waits (`--quiet-wait`) for "
        "other processes to use under 0.3 cores; *others* = the cores other processes used on "
        "average during the measurement (/proc/stat less this script's children). A number "
        "marked * ran with others ≥ 0.3 cores: contended, read it as a lower bound.",
        "",
    ]
    for model in MODELS:
        entry = results.get("models", {}).get(model)
        if entry is None and model != "1b":
            continue
        lines += render_model(model, entry or {})
    return "\n".join(lines) + "\n"


def run_counts(entry: dict[str, Any]) -> str:
    """The numbers of runs the entry's runtime results were made with (e.g. "3-4")."""
    counts = {len(r.get("runs") or []) for r in [entry.get("llama") or {}]}
    for rec in entry.get("quants", {}).values():
        counts |= {len(r.get("runs") or []) for r in (rec.get("runtimes") or {}).values()}
    counts.discard(0)
    if not counts:
        return "—"
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def render_model(model: str, entry: dict[str, Any]) -> list[str]:
    quants = entry.get("quants", {})
    mach = entry.get("machine", {})
    lines = [f"## {TITLES[model]}", ""]
    if entry:
        lines += [
            f"- Date: {entry.get('date', '?')}",
            "- Commands (each updates only its own rows): "
            + "; ".join(f"`{c}`" for c in entry.get("commands", [entry.get("command", "?")])),
            f"- Machine: `nproc` {mach.get('nproc')}, `free -g` total {mach.get('mem_total_gib')} "
            f"GiB, {mach.get('cpu')} ({mach.get('cpu_flags')}), Linux {mach.get('kernel')}, "
            f"Python {mach.get('python')}",
        ]
        versions = next(
            (q["convert"].get("versions") for q in quants.values() if "convert" in q), None
        )
        if versions:
            lines.append("- Export tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        llama = entry.get("llama") or {}
        if llama.get("llama_cpp"):
            lines.append(f"- llama.cpp: llama-cpp-python {llama['llama_cpp']}")
        s = entry.get("settings", {})
        lines += [
            f"- Prompt: {s.get('prompt_tokens')} tokens; {s.get('new_tokens')} new tokens; "
            f"{s.get('threads')} threads; KV cache {s.get('kv_len')}; prefill signature "
            f"{s.get('prefill')}; checkpoint {s.get('hf_dtype')}; runs per runtime process "
            f"{run_counts(entry)}",
        ]
        lines += [f"- Note: {n}" for n in NOTES.get(model, ())]
        lines.append("")
    order = [q for q in QUANTS if q in quants] + (
        [q for q in DEFAULT_QUANTS[model] if q not in quants] if model == "1b" else []
    )
    # ---- summary
    lines += [
        "| quant | .litertlm MB | convert s | peak RSS GiB | LiteRT-LM decode tok/s | "
        "LiteRT-LM TTFT s | .task decode tok/s | interpreter decode tok/s | interpreter TTFT s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for q in order:
        rec = quants.get(q)
        if rec is None:
            lines.append(f"| {q} | {todo(model, q)} | | | | | | | |")
            continue
        c = rec.get("convert", {})
        rt = rec.get("runtimes", {})
        lm, task, it = rt.get("litertlm", {}), rt.get("task", {}), rt.get("interp", {})
        lines.append(
            f"| {q} | {mb(c.get('files', {}).get('litertlm'))} | {val(c, 'convert_s')} | "
            f"{gib(c.get('peak_rss'))} | {val(lm, 'decode_tok_s')} | "
            f"{val(lm, 'ttft_s', '{:.3f}')} | {val(task, 'decode_tok_s')} | "
            f"{val(it, 'decode_tok_s')} | {val(it, 'ttft_s', '{:.3f}')} |"
        )
    llama = entry.get("llama")
    if llama and "error" not in llama:
        lines.append(
            f"| llama.cpp Q4_K_M GGUF (`{llama.get('file')}`) | {mb(llama.get('bytes'))} (.gguf) | "
            f"— | {gib(llama.get('rss_peak'))} (runtime) | {val(llama, 'decode_tok_s')} | "
            f"{val(llama, 'ttft_s', '{:.3f}')} | — | — | — |"
        )
    elif llama:
        lines.append(f"| llama.cpp Q4_K_M GGUF | failed: {llama['error'][:200]} | | | | | | | |")
    else:
        lines.append(
            f"| llama.cpp Q4_K_M GGUF | not measured yet: `bash bench/make_bench_llama_env.sh`, "
            f"then `.venv/bin/python bench/export.py --model {model} --quant <q>` | | | | | | | |"
        )
    lines.append("")
    errors = [
        (q, k, v["error"])
        for q in order
        if q in quants
        for k, v in [
            ("convert", quants[q].get("convert", {})),
            *quants[q].get("runtimes", {}).items(),
        ]
        if isinstance(v, dict) and v.get("error")
    ]
    if errors:
        lines += ["Failures:", ""]
        lines += [f"- {q} / {k}: `{e[:400]}`" for q, k, e in errors]
        lines.append("")
    if not quants:
        return lines
    # ---- conversion detail
    lines += [
        "Conversion detail (sizes in MB; estimate = `pipeline.export.options.estimate_export`):",
        "",
        "| quant | .tflite | .task | .litertlm | load s | convert s | bundle .task s | "
        "bundle .litertlm s | worker wall s | peak RSS GiB | `time -v` max RSS GiB | "
        "estimate MB | estimate RSS GiB | estimate min | others (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: |",
    ]
    for q in order:
        rec = quants.get(q)
        if rec is None:
            continue
        c = rec.get("convert", {})
        st = c.get("stages", {})
        f = c.get("files", {})
        est = rec.get("estimate", {})

        def sec(stage: str, st: dict = st) -> str:
            return num((st.get(stage) or {}).get("seconds"))

        lines.append(
            f"| {q} | {mb(f.get('tflite'))} | {mb(f.get('task'))} | {mb(f.get('litertlm'))} | "
            f"{sec('load')} | {sec('convert')} | {sec('bundle_task')} | {sec('bundle_litertlm')} | "
            f"{num(c.get('wall_s'))} | {gib(c.get('peak_rss'))} | {gib(c.get('time_v_max_rss'))} | "
            f"{mb(est.get('file_bytes'))} | {gib(est.get('peak_ram_bytes'))} | "
            f"{num(est.get('minutes'))} | {num(c.get('others_cores'), '{:.2f}')} |"
        )
    lines.append("")
    # ---- runtime detail
    lines += [
        "Decode detail (best of the warm runs; *first run* = the process's first run, which "
        "packs the weights for XNNPACK and, for LiteRT-LM, writes them to its cache):",
        "",
        "| quant | runtime | decode tok/s | TTFT s | prefill tok/s | first run TTFT s | "
        "init / load s | process RSS GiB | others (cores) | greedy ids = llama.cpp's "
        "(first n of N) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    llama_ids = (llama or {}).get("ids")
    for q in order:
        rec = quants.get(q)
        if rec is None:
            continue
        for key, label in (
            ("litertlm", "LiteRT-LM .litertlm"),
            ("task", "LiteRT-LM .task"),
            ("interp", "interpreter loop .tflite"),
        ):
            r = rec.get("runtimes", {}).get(key)
            if not r or "error" in r:
                continue
            first = (r.get("runs") or [{}])[0]
            agree = common_prefix(r.get("ids"), llama_ids)
            n_ids = len(r.get("ids") or [])
            same = "—" if agree is None else f"{agree} of {n_ids}"
            if r.get("from_run"):
                label += f" (run of {r['from_run']})"
            lines.append(
                f"| {q} | {label} | {num(r.get('decode_tok_s'))} | "
                f"{num(r.get('ttft_s'), '{:.3f}')} | {num(r.get('prefill_tok_s'))} | "
                f"{num(first.get('ttft_s'), '{:.3f}')} | "
                f"{num(r.get('init_s', r.get('load_s')), '{:.2f}')} | {gib(r.get('rss_peak'))} | "
                f"{num(r.get('others_cores'), '{:.2f}')} | "
                f"{same} |"
            )
    if llama and "error" not in llama:
        first = (llama.get("runs") or [{}])[0]
        prefill = None
        if llama.get("ttft_s") and entry.get("settings", {}).get("prompt_tokens"):
            prefill = entry["settings"]["prompt_tokens"] / llama["ttft_s"]
        lines.append(
            f"| Q4_K_M | llama.cpp | {num(llama.get('decode_tok_s'))} | "
            f"{num(llama.get('ttft_s'), '{:.3f}')} | {num(prefill)} (prompt / TTFT) | "
            f"{num(first.get('ttft_s'), '{:.3f}')} | {num(llama.get('load_s'), '{:.2f}')} | "
            f"{gib(llama.get('rss_peak'))} | {num(llama.get('others_cores'), '{:.2f}')} | "
            "(itself) |"
        )
    lines.append("")
    # ---- replies
    replies = [
        (q, quants[q].get("reply_litertlm"), quants[q].get("reply_interp"))
        for q in order
        if q in quants
    ]
    ref = (llama or {}).get("text")
    if any(a or b for _, a, b in replies) or ref:
        lines += [
            "Greedy replies, as text: how many leading characters equal llama.cpp's reply, and "
            "the text where they part (LiteRT-LM: a conversation with the bundle's own template "
            "and stop tokens, at most N tokens; interpreter: the decoded ids of the timed run):",
            "",
            "| quant | LiteRT-LM .litertlm (conversation) | interpreter loop .tflite |",
            "| --- | --- | --- |",
        ]

        def clean(text: str) -> str:
            return text.replace("\n", "⏎").replace("|", "/").replace("`", "'")

        def cell(text: str | None) -> str:
            if text is None:
                return "—"
            if not ref:
                return f"`{clean(text[:80])}`"
            k = common_prefix(list(text), list(ref)) or 0
            if k >= min(len(text), len(ref)):
                return f"{k} of {len(text)} chars equal (no difference)"
            return (
                f"{k} of {len(text)} chars equal; then `…{clean(text[max(0, k - 20) : k + 30])}…`"
            )

        for q, a, b in replies:
            lines.append(f"| {q} | {cell(a)} | {cell(b)} |")
        if ref:
            lines.append(
                f"| llama.cpp Q4_K_M (the reference) | — | {len(ref)} chars: `{clean(ref[:60])}…` |"
            )
        lines.append("")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="270m")
    p.add_argument("--quant", help=f"comma-separated subset of: {', '.join(QUANTS)}")
    p.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="comma-separated subset of litertlm,task,interp,llama (default: all)",
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-len", type=int, default=1280)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument(
        "--runs", type=int, default=4, help="runs per runtime process (best of all but the first)"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=300,
        help="seconds to wait, before each measurement, for other processes to use < 0.3 cores",
    )
    p.add_argument("--hf-dtype", choices=("float32", "bfloat16"), help="random shapes only")
    p.add_argument("--skip-convert", action="store_true", help="reuse kept bundles (--keep)")
    p.add_argument("--keep", action="store_true", help="keep the bundles after measuring")
    p.add_argument("--fresh", action="store_true", help="rebuild the prepared checkpoint/GGUF")
    p.add_argument(
        "--fresh-results",
        action="store_true",
        help="replace this model's earlier numbers instead of keeping the faster of old and new",
    )
    p.add_argument("--no-memory-check", action="store_true")
    p.add_argument("--export-python", type=Path, default=EXPORT_PYTHON)
    p.add_argument("--llama-python", type=Path, default=LLAMA_PYTHON)
    p.add_argument("--_prepare", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hf_dtype is None:
        args.hf_dtype = "bfloat16" if args.model == "1b" else "float32"
    quants = args.quant.split(",") if args.quant else list(DEFAULT_QUANTS[args.model])
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        p.error(f"unknown quant {bad}; choose from {', '.join(QUANTS)}")
    args.quants = quants
    args.runtimes = set(args.runtimes.split(","))
    if args.runtimes - set(RUNTIMES):
        p.error(f"unknown runtime {sorted(args.runtimes - set(RUNTIMES))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._prepare:
        prepare_child(args._prepare[0], Path(args._prepare[1]), args.hf_dtype)
        return 0
    if not args.export_python.exists():
        raise SystemExit(f"{args.export_python} missing: run `bash scripts/make_export_env.sh`")
    from pipeline.export.options import estimate_export
    from pipeline.models.config import ARCH_1B, ARCH_270M, ARCH_TINY

    arch = {"270m": ARCH_270M, "1b": ARCH_1B, "tiny": ARCH_TINY}[args.model]
    folder = DATA / args.model
    hf_dir, gguf = prepare(args.model, folder, args.hf_dtype, args.fresh)
    ids = prompt_ids(hf_dir)
    log(f"prompt: {len(ids)} tokens; {args.new_tokens} new tokens; {args.threads} threads")
    if len(ids) > args.prefill:
        log(f"note: the prompt is longer than the prefill signature ({args.prefill}): chunked")

    results = load_results()
    entry = results.setdefault("models", {}).setdefault(args.model, {})
    entry.update(
        {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "settings": {
                "prompt_tokens": len(ids),
                "new_tokens": args.new_tokens,
                "threads": args.threads,
                "kv_len": args.kv_len,
                "prefill": args.prefill,
                "runs": args.runs,
                "hf_dtype": "float32" if args.model == "270m" else args.hf_dtype,
            },
        }
    )
    command = ".venv/bin/python bench/export.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.fresh_results:
        entry.pop("command", None)
        entry["commands"] = []
    commands = entry.setdefault("commands", [])
    if entry.get("command") and entry["command"] not in commands:
        commands.append(entry.pop("command"))
    if command not in commands:
        commands.append(command)
    quants = entry.setdefault("quants", {})

    # llama.cpp first: its ids are the reference the bundles' loops are compared with
    if "llama" in args.runtimes:
        if gguf is None or not args.llama_python.exists():
            log(f"llama.cpp skipped: no {args.llama_python} (bash bench/make_bench_llama_env.sh)")
        else:
            llama = measure_llama(gguf, ids, args)
            llama["text"] = decode_ids(hf_dir, llama.get("ids"))
            llama["date"] = entry["date"]
            old = entry.get("llama") or {}
            keep = (
                not args.fresh_results
                and "error" not in old
                and (old.get("decode_tok_s") or 0) > (llama.get("decode_tok_s") or 0)
                and old.get("file") == llama.get("file")
            )
            entry["llama"] = {**old, "from_run": old.get("date") or "earlier"} if keep else llama
            save_results(results)

    if not args.runtimes & {"litertlm", "task", "interp"}:
        args.quants = []  # llama.cpp only: no conversion
    for quant in args.quants:
        est = estimate_export(arch, quant, args.kv_len)
        qdir = folder / quant
        rec: dict[str, Any] = {
            "date": entry["date"],
            "estimate": {
                "file_bytes": est.file_bytes,
                "peak_ram_bytes": est.peak_ram_bytes,
                "minutes": est.minutes,
            },
        }
        old = quants.get(quant, {})  # an earlier invocation's record (see merge_best)
        if args.skip_convert:
            rec["convert"] = old.get("convert", {"name": f"{args.model}-?"})
            name = rec["convert"].get("name") or ""
        else:
            free = mem_available()
            if free is not None and free < est.peak_ram_bytes and not args.no_memory_check:
                log(
                    f"{quant}: the converter needs about {gib(est.peak_ram_bytes)} GiB, only "
                    f"{gib(free)} GiB available; skipped (stop other jobs, or --no-memory-check)"
                )
                continue
            log(
                f"{args.model} {quant}: converting (estimate {est.minutes:.1f} min, "
                f"{gib(est.peak_ram_bytes)} GiB)"
            )
            rec["convert"] = convert(args.model, quant, hf_dir, qdir, args)
            name = rec["convert"]["name"]
            quants[quant] = merge_best(old, rec, args.fresh_results)
            save_results(results)
        if "error" not in rec["convert"]:
            rec["runtimes"] = measure_bundles(qdir, name, ids, args)
            lm = rec["runtimes"].get("litertlm", {})
            rec["reply_litertlm"] = lm.get("reply")
            rec["reply_interp"] = decode_ids(hf_dir, rec["runtimes"].get("interp", {}).get("ids"))
        quants[quant] = merge_best(old, rec, args.fresh_results)
        save_results(results)
        if not args.keep and qdir.exists():
            shutil.rmtree(qdir)
    log(f"wrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
