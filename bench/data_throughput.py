"""Dataset-stage throughput: validate + convert + format rows/s, tokenize tokens/s, peak RSS.

Builds a 200,000-conversation JSONL by repeating the shared datasets (Alpaca rows converted to
ShareGPT, plus the ShareGPT tool-call rows), then measures, each in a fresh subprocess so that
peak RSS is its own:

* validate + convert + format: every record streamed through ``iter_checked`` (parse, convert,
  pandera checks) and every valid conversation rendered with the Gemma 3 template;
* tokenize: the formatted texts of the first rows through the real Gemma 3 tokenizer;
* the same validate + convert + format on files 5x and 10x larger (the ShareGPT 10x file is
  over 2 GB), to show that peak RSS does not grow with the file.

Run: ``uv run python bench/data_throughput.py [--rows 200000] [--shared ../shared/datasets]``.
Writes ``bench/results/data_throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_host import cpu_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "data_throughput.md"


def build_corpus(shared: Path, out: Path, rows: int, fmt: str) -> int:
    """Write ``rows`` conversations to ``out`` by cycling the shared datasets; returns bytes."""
    from pipeline.data.converter import conversation_to_sharegpt
    from pipeline.data.validate import iter_checked

    if fmt == "alpaca":
        base = []
        for name in ("alpaca_en_demo.json", "identity.json"):
            base += json.loads((shared / name).read_text(encoding="utf-8"))
        lines = [json.dumps(r, ensure_ascii=False) for r in base]
    else:
        sources = [shared / n for n in ("alpaca_en_demo.json", "identity.json")]
        sources.append(shared / "glaive_toolcall_en_demo.json")
        lines = [
            json.dumps(conversation_to_sharegpt(c.conversation), ensure_ascii=False)
            for c in iter_checked(sources)
            if c.conversation is not None
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(lines[i % len(lines)])
            fh.write("\n")
    return out.stat().st_size


def child_validate(path: str) -> dict:
    """Runs in a subprocess: stream the file through validation, conversion and the template."""
    from pipeline.data.formatter import format_conversation
    from pipeline.data.validate import iter_checked

    started = time.perf_counter()
    total = valid = chars = 0
    for checked in iter_checked(path):
        total += 1
        if checked.conversation is not None:
            valid += 1
            chars += len(format_conversation(checked.conversation).text)
    seconds = time.perf_counter() - started
    return {
        "rows": total,
        "valid": valid,
        "chars": chars,
        "seconds": seconds,
        "rows_per_s": total / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_tokenize(path: str, rows: int) -> dict:
    """Runs in a subprocess: tokenize the formatted text of the first ``rows`` conversations."""
    from pipeline.data.formatter import format_conversation
    from pipeline.data.validate import iter_checked
    from pipeline.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    texts = []
    for checked in iter_checked(path):
        if checked.conversation is not None:
            texts.append(format_conversation(checked.conversation).text)
        if len(texts) >= rows:
            break
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1000):
        tokens += sum(len(ids) for ids in tokenizer.encode_batch(texts[i : i + 1000]))
    seconds = time.perf_counter() - started
    return {
        "rows": len(texts),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = cpu_model("unknown CPU")
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tokenize-rows", type=int, default=20_000)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "validate":
            result = child_validate(rest[0])
        else:
            result = child_tokenize(rest[0], int(rest[1]))
        print(json.dumps(result))
        return

    rows = {}
    sizes = {}
    for fmt, mults in (("sharegpt", (1, 5, 10)), ("alpaca", (1, 5))):
        for mult in mults:
            path = args.work / f"{fmt}_{mult}x.jsonl"
            sizes[(fmt, mult)] = build_corpus(args.shared, path, args.rows * mult, fmt)
            rows[(fmt, mult)] = run_child("validate", str(path))
            print(fmt, mult, rows[(fmt, mult)], flush=True)
            if mult > 1:
                path.unlink()  # the big files are only needed once
    tok = run_child("tokenize", str(args.work / "sharegpt_1x.jsonl"), str(args.tokenize_rows))
    print("tokenize", tok, flush=True)

    lines = [
        "# Dataset-stage throughput",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Command: `uv run python bench/data_throughput.py --rows {args.rows}`",
        "- Corpus: the shared datasets (alpaca_en_demo 999 + identity 91 Alpaca rows, "
        "glaive_toolcall_en_demo 300 ShareGPT tool-call rows) repeated; `sharegpt` is all of them "
        "converted to ShareGPT JSONL, `alpaca` the two Alpaca files as Alpaca JSONL.",
        "- validate + convert + format: `iter_checked` (orjson parse, conversion to the canonical "
        "conversation, pandera checks per chunk) then `format_conversation` (Gemma 3 template with "
        "trained spans) for every valid row; each run in its own process (peak RSS is its own).",
        "- Goal: >= 20,000 rows/s on 2 cores; peak RSS does not grow with the file.",
        "",
        "| file | rows | size | valid | seconds | rows/s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (fmt, mult), r in rows.items():
        lines.append(
            f"| {fmt} {mult}x | {r['rows']:,} | {sizes[(fmt, mult)] / 2**20:,.0f} MiB | "
            f"{r['valid']:,} | {r['seconds']:.1f} | **{r['rows_per_s']:,.0f}** | "
            f"{r['peak_rss_mb']:,.0f} MiB |"
        )
    lines += [
        "",
        "## Tokenization (real Gemma 3 tokenizer rebuilt from the embedded 270M GGUF)",
        "",
        "| rows | tokens | seconds | tokens/s | peak RSS |",
        "|---:|---:|---:|---:|---:|",
        f"| {tok['rows']:,} | {tok['tokens']:,} | {tok['seconds']:.1f} | "
        f"**{tok['tokens_per_s']:,.0f}** | {tok['peak_rss_mb']:,.0f} MiB |",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
