"""Chat latency and speed per backend, through the chat stack users run (ChatSession ->
backend): first-token latency (template + tokenize + prefill + first token; for bundles also
the hop to the worker process) and decode tokens/s after the first token.

CPU (this machine), the Gemma 3 270M:

    .venv/bin/python bench/chat.py cpu --bundle EXPORT_DIR [--run RUN_DIR]

- ``keras``: the embedded 270M through Keras/JAX in float32;
- ``keras-lora`` / ``keras-merged`` (with --run): a run's final checkpoint, LoRA as a separate
  path or merged into the weights;
- ``litert_lm .litertlm`` / ``litert_lm .task`` / ``interpreter .task``: the export's bundles
  (EXPORT_DIR, e.g. ``gemma-tui export smoke270 --quant dynamic_int8``), 2 threads.

GPU (one H100 through the device tool; bench/run_gpu_chat.sh installs the wheels):

    python bench/chat.py gpu --tokenizer bench/data/tokenizer.spm

- the 1B and 270M shapes with random bf16 weights (the compute of the real models; no
  weights offline), without and with a rank-16 LoRA on every projection, and merged.

Each case: one warm-up reply, then ``--runs`` replies (median reported) of greedy decoding
of up to ``--new`` tokens to a short prompt (~30 tokens) and a long one (~900 tokens). A
random-weight model never emits a stop token; a real one may stop early: the table gives
the tokens each reply actually had. Writes ``--out``/chat-<mode>.json; ``--render`` turns
the JSON files into bench/results/chat.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_host import cpu_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHORT = "Write a long story about a dragon who learns to bake bread, in many paragraphs."
LONG = (
    SHORT
    + " Here is some background first. "
    + ("The village sat between two rivers, and every morning the baker lit the ovens. " * 50)
)


def machine() -> str:
    cpu = cpu_model()
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores"


def _row(label: str, backend: Any, name: str, results: list[Any], runs: int) -> dict[str, Any]:
    rates = [r.decode_tokens_per_s for r in results if r.decode_tokens_per_s]
    return {
        "case": label,
        "backend": backend.label,
        "prompt": name,
        "prompt_tokens": results[0].prompt_tokens,
        "prefill_tokens": results[0].prefill_tokens,
        "new_tokens": statistics.median(r.new_tokens for r in results),
        "ttft_s": statistics.median(r.first_token_s or 0.0 for r in results),
        "decode_tok_s": statistics.median(rates) if rates else None,
        "runs": runs,
    }


def measure(backend: Any, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """short and long prompts in fresh conversations (each run's prompt starts with its own
    number, so no run reuses another's KV cache), then a follow-up message after the long
    one (where a backend that keeps the conversation's KV cache prefills only the new turn)."""
    from pipeline.inference.chat import ChatSession, Sampling

    sampling = Sampling(max_new_tokens=args.new)
    ChatSession(backend, sampling=sampling).send("warm-up " + SHORT)  # compiles, caches
    ChatSession(backend, sampling=sampling).send("warm-up " + LONG)
    got: dict[str, list[Any]] = {"short": [], "long": [], "follow-up": []}
    for i in range(args.runs):
        got["short"].append(ChatSession(backend, sampling=sampling).send(f"[{i}] {SHORT}").stats)
        s = ChatSession(backend, sampling=sampling)
        got["long"].append(s.send(f"[{i}] {LONG}").stats)
        got["follow-up"].append(s.send("Go on, and make it longer.").stats)
    rows = [_row(label, backend, name, results, args.runs) for name, results in got.items()]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def cpu_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pipeline.inference.targets import OpenOptions, open_target, resolve_target

    rows: list[dict[str, Any]] = []
    opts = OpenOptions(device="cpu", context_length=2048)
    b = open_target(resolve_target("embedded"), opts)
    rows += measure(b, "keras 270M float32", args)
    b.close()
    if args.run:
        run = Path(args.run)
        for merge in (False, True):
            b = open_target(resolve_target(str(run)), OpenOptions(device="cpu", merge=merge))
            rows += measure(b, f"keras 270M + LoRA {'merged' if merge else 'separate'}", args)
            b.close()
    if args.bundle:
        folder = Path(args.bundle)
        for suffix, runtime in ((".litertlm", None), (".task", None), (".task", "interpreter")):
            files = sorted(folder.glob(f"*{suffix}"))
            if not files:
                continue
            b = open_target(resolve_target(str(files[0])), OpenOptions(runtime=runtime, threads=2))
            rows += measure(b, f"{b.kind} {suffix} ({files[0].stem})", args)
            b.close()
    return rows


def gpu_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax

    from pipeline.inference.keras_inference import KerasBackend
    from pipeline.models.config import ARCH_1B, ARCH_270M
    from pipeline.models.gemma3_jax import random_params
    from pipeline.models.lora import AdapterMeta, init_adapter
    from pipeline.models.tokenizer import GemmaTokenizer

    tok = GemmaTokenizer.from_file(args.tokenizer)
    rows: list[dict[str, Any]] = []
    dev = jax.devices("gpu")[0]
    for arch in (ARCH_1B, ARCH_270M):
        params = random_params(arch, "bfloat16", seed=0)
        targets = ("q", "k", "v", "o", "gate", "up", "down")
        meta = AdapterMeta(arch=arch, rank=16, alpha=32.0, targets=targets)
        adapter = init_adapter(meta, seed=1)
        # init_adapter zeroes B (a fresh adapter is the identity); give it weights to compute
        for layer in adapter["layers"]:
            for t in layer.values():
                t["b"] = t["b"] + 0.01
        cases = [("", None, 1), ("", None, 8), (" + LoRA r16 separate", adapter, 8)]
        for how, ad, chunk in cases:
            b = KerasBackend(
                params,
                ad,
                tok,
                arch,
                label=f"random {arch.name} bf16{how} · Keras/JAX on gpu",
                lora_scale=meta.scale,
                dtype="bfloat16",
                context_length=2048,
                device=dev,
                chunk=chunk,
            )
            b.warmup()
            steps = f", {chunk} step{'s' if chunk > 1 else ''}/call"
            rows += measure(b, f"keras {arch.name} bf16{how}{steps}", args)
            b.close()
        del params
    return rows


def render(files: list[Path]) -> str:
    out = ["# Chat: first-token latency and decode speed per backend", ""]
    out += [
        "Made by `bench/chat.py` (the command, machine and date of each part are below). "
        "Greedy decoding through `ChatSession` (the code `gemma-tui chat` and the Chat screen "
        "run), median of the runs after one warm-up reply. *First token* is from `send()` to "
        "the first reply token: template, tokenization, prefill, one decode step (and, for "
        "bundles, the hop to the worker process). *Decode* is tokens/s after the first.",
        "",
    ]
    for f in files:
        data = json.loads(f.read_text())
        out += [f"## {data['title']}", ""]
        out += [f"- Command: `{data['command']}`", f"- Machine: {data['machine']}"]
        out += [f"- Date: {data['date']}", ""]
        out += [
            "| case | prompt | prompt tokens (prefilled) | reply tokens | first token | decode |"
        ]
        out += ["|---|---|---|---|---|---|"]
        for r in data["rows"]:
            rate = f"{r['decode_tok_s']:.1f} tok/s" if r["decode_tok_s"] else "n/a"
            out.append(
                f"| {r['case']} | {r['prompt']} | {r['prompt_tokens']} ({r['prefill_tokens']}) "
                f"| {r['new_tokens']:.0f} "
                f"| {r['ttft_s'] * 1000:.0f} ms | {rate} |"
            )
        if data.get("notes"):
            out += ["", *data["notes"]]
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("cpu", "gpu", "render"))
    p.add_argument("--bundle", help="an export folder (its .litertlm and .task are measured)")
    p.add_argument("--run", help="a run folder (its final checkpoint, LoRA separate and merged)")
    p.add_argument("--tokenizer", default=str(REPO / "bench/data/tokenizer.spm"))
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench/results"))
    p.add_argument("files", nargs="*", help="render: the JSON files")
    args = p.parse_args()
    out = Path(args.out)
    if args.mode == "render":
        files = [Path(f) for f in args.files] or sorted(out.glob("chat-*.json"))
        (REPO / "bench/results/chat.md").write_text(render(files))
        return 0
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if args.mode == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows = cpu_cases(args) if args.mode == "cpu" else gpu_cases(args)
    data = {
        "title": "CPU (270M)" if args.mode == "cpu" else "GPU (1B and 270M shapes, random bf16)",
        "command": os.environ.get("CHAT_BENCH_COMMAND", " ".join(["python", *sys.argv])),
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": rows,
    }
    if args.mode == "gpu":
        import jax

        data["machine"] += f"; {jax.devices()[0].device_kind}, jax {jax.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"chat-{args.mode}.json").write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
