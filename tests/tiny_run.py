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


ALL_TARGETS = '["q", "k", "v", "o", "gate", "up", "down"]'
YES_RUN = "tiny-run"


def train_yes_run(root: Path) -> tuple[Any, Path]:
    """(workspace, run folder) of the tiny model taught to answer "Yes." and stop: LoRA r8
    on every projection, 60 steps at a high rate, a checkpoint at step 30 and final/. Its
    greedy replies are "Yes." then <end_of_turn>, so stop tokens are exercised for real."""
    from pipeline.profiles.io import loads_profile
    from pipeline.training.trainer import train
    from pipeline.workspace import Workspace

    ws = Workspace(root / "ws")
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"What is {i} plus {i}?"},
                {"from": "gpt", "value": "Yes."},
            ]
        }
        for i in range(40)
    ]
    data = root / "yes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    toml = tiny_profile_toml("tiny-export", max_steps=60, learning_rate=2e-2, checkpoint_every=30)
    toml = toml.replace('targets = ["q", "v"]', f"targets = {ALL_TARGETS}")
    toml = toml.replace("rank = 4", "rank = 8")
    run_dir = ws.runs_dir / YES_RUN
    result = train(loads_profile(toml), data=data, workspace=ws, run_dir=run_dir)
    assert result.status == "finished"
    return ws, run_dir
