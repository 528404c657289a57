"""Packing efficiency on real length distributions: how much of each row is real and trained.

Tokenizes the shared datasets through the training data path (``prepare_data``: checks,
Gemma 3 template, loss masks; no dedup, no truncation yet), saves the full-length alpaca
examples to ``bench/data/alpaca_en_demo.npz`` (``pipeline.training.batches.load_examples``
reads it without the tokenizer, e.g. on the GPU machine), then for each sequence length
truncates them by the trainer's rule and lays out one epoch with and without packing, as
:class:`~pipeline.training.batches.BatchStream` does:

* rows per epoch and examples per row;
* non-padding share: input positions that hold a token / (rows x S);
* trained share: positions whose target carries loss / (rows x S);
* packed / unpacked trained tokens per row: the expected gain in trained tokens/s (a step
  costs the same for a padded row as for a packed one, since S is fixed);
* host time to build one batch of 8 rows.

Run: ``uv run python bench/packing_efficiency.py [--shared ../shared/datasets]``.
Writes ``bench/results/packing_efficiency.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "packing_efficiency.md"
EXAMPLES = REPO / "bench" / "data" / "alpaca_en_demo.npz"
DATASETS = ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "identity.json")
LENGTHS = (1024, 512)
BATCH = 8


def tokenize(path: Path, train_on_prompt: bool = False):
    """Full-length examples of every valid row of ``path`` (nothing truncated or deduped)."""
    from pipeline.profiles.schema import DataConfig, TrainConfig
    from pipeline.training.data import prepare_data

    data = DataConfig(train_path=str(path), dedup="none")
    train = TrainConfig(
        max_steps=1, sequence_length=32768, train_on_prompt=train_on_prompt, loss_chunk_size=0
    )
    return prepare_data(data, train, None).train


def measure(examples, seq: int, packing: bool) -> dict[str, float]:
    import numpy as np

    from pipeline.training.batches import BatchStream, truncate_examples

    cut = truncate_examples(examples, seq)
    stream = BatchStream(cut.examples, batch_size=1, sequence_length=seq, packing=packing, seed=0)
    rows = stream.rows_per_epoch
    tokens = trained = 0
    for _ in range(rows):
        b = stream.next_batch()
        tokens += int(np.count_nonzero(b["segment_ids"]))
        trained += int(np.count_nonzero(b["loss_mask"]))
    timed = BatchStream(
        cut.examples, batch_size=BATCH, sequence_length=seq, packing=packing, seed=0
    )
    started = time.perf_counter()
    for _ in range(50):
        timed.next_batch()
    per_batch = (time.perf_counter() - started) / 50
    return {
        "examples": len(cut.examples),
        "truncated": cut.truncated,
        "dropped": cut.dropped_untrained,
        "rows": rows,
        "per_row": len(cut.examples) / rows,
        "fill": tokens / (rows * seq),
        "trained_share": trained / (rows * seq),
        "trained_per_row": trained / rows,
        "batch_ms": per_batch * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets")
    args = parser.parse_args()
    import numpy as np

    from pipeline.training.batches import save_examples

    lines = [
        "# Packing efficiency",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}",
        "- Command: `uv run python bench/packing_efficiency.py`",
        "- Data: the shared datasets, every valid row (no dedup), Gemma 3 template, loss on "
        "model turns (train_on_prompt false); truncated by the trainer's rule (first S + 1 "
        "tokens). One epoch laid out exactly as `BatchStream` does (seed 0).",
        "- fill: input positions holding a token / (rows x S); trained: positions whose target "
        "carries loss / (rows x S); gain: packed / unpacked trained tokens per row, i.e. the "
        "expected trained-tokens/s ratio at equal step time (rows are always S long). "
        f"batch ms: host time to build one batch of {BATCH} rows.",
        "",
    ]
    saved = None
    for name in DATASETS:
        path = args.shared / name
        started = time.perf_counter()
        examples = tokenize(path)
        seconds = time.perf_counter() - started
        lengths = examples.lengths
        share = examples.trained_tokens / examples.tokens
        if name == "alpaca_en_demo.json":
            saved = save_examples(EXAMPLES, examples)
        lines += [
            f"## {name}",
            "",
            f"{len(examples):,} examples, {examples.tokens:,} tokens "
            f"({examples.trained_tokens:,} trained, {share:.1%}); "
            f"length median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
            f"max {lengths.max()}; tokenized in {seconds:.1f} s",
            "",
            "| S | packing | examples | truncated | rows | ex/row | fill | trained | gain "
            "| batch ms |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for seq in LENGTHS:
            base = measure(examples, seq, packing=False)
            for packing in (False, True):
                m = base if not packing else measure(examples, seq, packing=True)
                gain = m["trained_per_row"] / base["trained_per_row"]
                lines.append(
                    f"| {seq} | {'yes' if packing else 'no'} | {m['examples']:,} | "
                    f"{m['truncated']:,} | {m['rows']:,} | {m['per_row']:.2f} | "
                    f"{m['fill']:.1%} | {m['trained_share']:.1%} | "
                    f"{'**' if packing else ''}{gain:.2f}x{'**' if packing else ''} | "
                    f"{m['batch_ms']:.2f} |"
                )
        lines.append("")
    if saved is not None:
        lines += [
            f"The full-length alpaca examples are saved to `{saved.relative_to(REPO)}` "
            f"({saved.stat().st_size / 1024:.0f} KiB; gitignored): "
            "`truncate_examples(load_examples(path), S)` gives what the trainer would see.",
            "",
        ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
