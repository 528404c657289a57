"""What the end-to-end training tests share: a small chat dataset and a profile for the
tiny model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_chat_jsonl(path: Path, rows: int = 40) -> Path:
    """``rows`` short ShareGPT conversations ("What is i plus i?") as JSON lines."""
    records = [
        {
            "conversations": [
                {"from": "human", "value": f"What is {i} plus {i}?"},
                {"from": "gpt", "value": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(rows)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tiny_profile_toml(name: str, *, eval_fraction: float | None = None, **train: Any) -> str:
    """A profile TOML for the tiny model in float32: LoRA r4 on q and v, batch 2 x 64,
    loss chunk 32, plus the ``train`` keys given (max_steps at least)."""
    fields = {"batch_size": 2, "sequence_length": 64, **train}
    fields |= {"precision": "float32", "loss_chunk_size": 32}
    lines = [
        f'name = "{name}"',
        "[model]",
        'source = "tiny"',
        'dtype = "float32"',
        "[lora]",
        "rank = 4",
        'targets = ["q", "v"]',
        "[train]",
        *(f"{k} = {v!r}" for k, v in fields.items()),
    ]
    if eval_fraction is not None:
        lines += ["[data]", f"eval_fraction = {eval_fraction!r}"]
    return "\n".join(lines) + "\n"
