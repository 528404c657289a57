"""One CPU decode measurement for bench/export.py, in a fresh process of the right environment.

    .venv-export/bin/python bench/export_runtime.py litert_lm SPEC.json   # .litertlm / .task
    .venv-export/bin/python bench/export_runtime.py interp SPEC.json      # .tflite, Python loop
    .venv-bench-llama/bin/python bench/export_runtime.py llama SPEC.json  # GGUF, llama.cpp
    .venv-bench-llama/bin/python bench/export_runtime.py quantize SPEC.json  # GGUF -> Q4_K_M

SPEC is a JSON object: ``model`` (the file), ``ids`` (the prompt's token ids, <bos> first),
``text`` (the same prompt as text, for LiteRT-LM, which tokenizes itself), ``new_tokens``,
``threads``, ``kv_len``, ``cache_dir``, ``runs``. The result is one JSON line on stdout after
:data:`MARK`. Every runtime decodes greedily and ignores stop tokens, so each run produces
exactly ``new_tokens`` tokens:

* TTFT (time to first token): from the start of the prompt to the first generated token
  (prefill of the prompt and the logits of its last position);
* decode tok/s: the tokens after the first, over the time after the first.

Each runtime runs ``runs`` times in the same process: the first run pays one-off costs
(XNNPACK packs the weights; LiteRT-LM writes them to ``cache_dir``); the best of the
others is reported (see :func:`summary`).

Only the standard library is imported at the top: this file runs under the
export environment (litert_lm, ai_edge_litert) and the llama.cpp one (llama_cpp), which share
nothing but Python.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

MARK = "@@bench-export@@ "
REPO = Path(__file__).resolve().parent.parent


def rss_peak() -> int:
    """This process's peak resident set in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timing(first_s: float, total_s: float, n: int) -> dict[str, Any]:
    decode_s = total_s - first_s
    return {
        "ttft_s": first_s,
        "total_s": total_s,
        "tokens": n,
        "decode_tok_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else None,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of the warm runs (all but the first; the only run if there is one): each
    speed its highest, each time its lowest. On a shared 2-core machine a slower run is
    another process taking a core, not the runtime."""
    warm = runs[1:] or runs
    out: dict[str, Any] = dict(warm[0])
    for key in warm[0]:
        values = [r[key] for r in warm if isinstance(r.get(key), (int, float))]
        if len(values) != len(warm):
            continue
        if key.endswith("tok_s"):
            out[key] = max(values)
        elif key.endswith("_s"):
            out[key] = min(values)
    return out


# --------------------------------------------------------------------------- LiteRT-LM


def run_litert_lm(spec: dict[str, Any]) -> dict[str, Any]:
    """``litert_lm.Benchmark`` (the engine's own prefill / decode timers) on the bundle, with
    the prompt text and exactly as many prefill tokens as the prompt has; then one greedy
    reply through a session (for the text, not timed)."""
    import litert_lm

    cache = Path(spec["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    threads = int(spec["threads"])
    runs = []
    for _ in range(int(spec.get("runs", 3))):
        start = time.perf_counter()
        bench = litert_lm.Benchmark(
            model_path=str(spec["model"]),
            backend=litert_lm.Backend.CPU(thread_count=threads),
            prefill_tokens=len(spec["ids"]),
            decode_tokens=int(spec["new_tokens"]),
            max_num_tokens=int(spec["kv_len"]),
            cache_dir=str(cache),
            prompt=spec["text"],
        )
        info = bench.run()
        wall = time.perf_counter() - start
        runs.append(
            {
                "wall_s": wall,
                "init_s": info.init_time_in_second,
                "ttft_s": info.time_to_first_token_in_second,
                "prefill_tokens": info.last_prefill_token_count,
                "prefill_tok_s": info.last_prefill_tokens_per_second,
                "tokens": info.last_decode_token_count,
                "decode_tok_s": info.last_decode_tokens_per_second,
            }
        )
    reply = None
    if spec.get("reply", True):
        engine = litert_lm.Engine(
            str(spec["model"]),
            backend=litert_lm.Backend.CPU(thread_count=threads),
            max_num_tokens=int(spec["kv_len"]),
            cache_dir=str(cache),
        )
        with engine:
            conv = engine.create_conversation(
                sampler_config=litert_lm.SamplerConfig(top_k=1, temperature=0.0),
                max_output_tokens=int(spec["new_tokens"]),
            )
            with conv:
                out = conv.send_message(spec["user_text"])
            contents = getattr(out, "contents", None)
            reply = contents[0].text if contents else str(out)
    return {"runs": runs, **summary(runs), "reply": reply, "rss_peak": rss_peak()}


# --------------------------------------------------------------------------- interpreter


def run_interp(spec: dict[str, Any]) -> dict[str, Any]:
    """The export worker's own ``TfliteLoop`` (ai_edge_litert interpreter, XNNPACK) over the
    ``.tflite``: prefill the prompt but its last token, then decode token by token."""
    sys.path.insert(0, str(REPO))
    from pipeline.export.worker import TfliteLoop

    start = time.perf_counter()
    loop = TfliteLoop(str(spec["model"]), int(spec["threads"]))
    load_s = time.perf_counter() - start
    runs, ids = [], None
    for _ in range(int(spec.get("runs", 3))):
        res = loop.greedy(list(spec["ids"]), int(spec["new_tokens"]), set())
        ids = res["ids"]
        runs.append(timing(res["first_token_s"], res["total_s"], len(ids)))
    return {"runs": runs, **summary(runs), "load_s": load_s, "ids": ids, "rss_peak": rss_peak()}


# --------------------------------------------------------------------------- llama.cpp


def run_llama(spec: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python on the GGUF: evaluate the prompt ids in one batch, then one token at
    a time, taking the argmax of the logits (greedy, stop tokens ignored)."""
    import llama_cpp
    import numpy as np

    ids = [int(i) for i in spec["ids"]]
    threads = int(spec["threads"])
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(spec["model"]),
        n_ctx=int(spec["kv_len"]),
        n_batch=max(len(ids), 32),
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        use_mmap=True,
        verbose=False,
    )
    load_s = time.perf_counter() - start
    n_new = int(spec["new_tokens"])
    n_vocab = llm.n_vocab()
    runs, out = [], []
    for _ in range(int(spec.get("runs", 3))):
        llm.reset()
        out = []
        start = time.perf_counter()
        llm.eval(ids)
        first = None
        for i in range(n_new):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            out.append(token)
            if first is None:
                first = time.perf_counter() - start
            if i + 1 < n_new:
                llm.eval([token])
        runs.append(timing(first or 0.0, time.perf_counter() - start, len(out)))
    return {
        "runs": runs,
        **summary(runs),
        "load_s": load_s,
        "ids": out,
        "rss_peak": rss_peak(),
        "llama_cpp": getattr(llama_cpp, "__version__", "?"),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


def run_quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """``llama_model_quantize`` SPEC["model"] (F16/F32 GGUF) to SPEC["out"] as Q4_K_M."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = int(spec.get("threads", 2))
    start = time.perf_counter()
    code = llama_cpp.llama_model_quantize(
        str(spec["model"]).encode(), str(spec["out"]).encode(), params
    )
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code}")
    return {"seconds": time.perf_counter() - start, "bytes": Path(spec["out"]).stat().st_size}


MODES = {
    "litert_lm": run_litert_lm,
    "interp": run_interp,
    "llama": run_llama,
    "quantize": run_quantize,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in MODES:
        print(f"usage: export_runtime.py {{{'|'.join(MODES)}}} SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    result = MODES[argv[0]](spec)
    sys.stdout.write(MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
