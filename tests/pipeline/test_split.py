"""Seeded train/eval split: exact sizes, determinism, stability, groups, files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.data.split import split_conversations, split_dataset
from pipeline.data.types import Conversation, Turn
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import Event, StageDone


def qa(i: int, ident: str | None = None) -> Conversation:
    return Conversation((Turn("user", f"question {i}"), Turn("model", f"answer {i}")), id=ident)


CONVS = [qa(i) for i in range(200)]


def test_sizes_are_exact() -> None:
    train, evals = split_conversations(CONVS, eval_fraction=0.1)
    assert (len(train), len(evals)) == (180, 20)
    train, evals = split_conversations(CONVS, eval_count=7)
    assert (len(train), len(evals)) == (193, 7)
    assert split_conversations(CONVS, eval_fraction=0.0)[1] == []
    assert len(split_conversations(CONVS, eval_count=500)[1]) == 200


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    assert split_conversations(CONVS, seed=3) == split_conversations(CONVS, seed=3)
    assert split_conversations(CONVS, seed=3)[1] != split_conversations(CONVS, seed=4)[1]


def test_order_is_kept_and_nothing_is_lost() -> None:
    train, evals = split_conversations(CONVS)
    assert sorted(train + evals, key=CONVS.index) == CONVS
    assert train == sorted(train, key=CONVS.index)
    assert evals == sorted(evals, key=CONVS.index)


def test_stable_when_the_input_is_reordered_or_grows() -> None:
    shuffled = CONVS[:]
    random.Random(0).shuffle(shuffled)
    eval_a = set(map(repr, split_conversations(CONVS, eval_count=20)[1]))
    eval_b = set(map(repr, split_conversations(shuffled, eval_count=20)[1]))
    assert eval_a == eval_b
    # 10% more rows: most of the old eval rows stay in eval.
    grown = CONVS + [qa(i) for i in range(200, 220)]
    eval_c = set(map(repr, split_conversations(grown, eval_count=22)[1]))
    assert len(eval_a & eval_c) >= 18


def test_group_by_id_keeps_groups_together() -> None:
    convs = [qa(i, ident=f"g{i // 4}") for i in range(200)]  # 50 groups of 4
    train, evals = split_conversations(convs, eval_fraction=0.1, group_by="id")
    train_ids = {c.id for c in train}
    eval_ids = {c.id for c in evals}
    assert not train_ids & eval_ids
    assert len(evals) % 4 == 0 and len(evals) >= 20


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError):
        split_conversations(CONVS, eval_fraction=1.0)
    with pytest.raises(DatasetError):
        split_conversations(CONVS, eval_count=-1)
    with pytest.raises(DatasetError):
        split_conversations(CONVS, group_by="topic")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def row(i: int) -> dict[str, Any]:
    return {
        "conversations": [
            {"from": "human", "value": f"question {i}"},
            {"from": "gpt", "value": f"answer {i}"},
        ]
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rows: list[Any] = [row(i) for i in range(100)]
    rows.insert(50, '{"conversations": []}')  # invalid: no turns
    return write_jsonl(tmp_path / "data.jsonl", rows)


def test_split_dataset_files(dataset: Path, tmp_path: Path) -> None:
    train, evals = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "eval.jsonl"
    events: list[Event] = []
    result = split_dataset(dataset, train, evals, eval_fraction=0.2, seed=1, on_event=events.append)
    assert (result.train_count, result.eval_count, result.invalid) == (80, 20, 1)
    train_rows = [json.loads(x) for x in train.read_text().splitlines()]
    eval_rows = [json.loads(x) for x in evals.read_text().splitlines()]
    assert len(train_rows) == 80 and len(eval_rows) == 20
    questions = [r["conversations"][0]["value"] for r in train_rows + eval_rows]
    assert sorted(questions) == sorted(f"question {i}" for i in range(100))
    # The same rows as the in-memory split, in input order.
    convs = [qa(i) for i in range(100)]
    mem_train, mem_eval = split_conversations(convs, eval_fraction=0.2, seed=1)
    assert [r["conversations"][0]["value"] for r in eval_rows] == [
        c.turns[0].text for c in mem_eval
    ]
    assert len(mem_train) == 80
    assert any(isinstance(e, StageDone) and e.stage == "split" for e in events)
    assert sorted(p.name for p in train.parent.iterdir()) == ["eval.jsonl", "train.jsonl"]
    # Re-running gives byte-identical files.
    first = (train.read_bytes(), evals.read_bytes())
    split_dataset(dataset, train, evals, eval_fraction=0.2, seed=1)
    assert (train.read_bytes(), evals.read_bytes()) == first


def test_split_dataset_refuses_inputs_as_outputs(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="input"):
        split_dataset(dataset, dataset, tmp_path / "e.jsonl")
    with pytest.raises(DatasetError, match="same file"):
        split_dataset(dataset, tmp_path / "x.jsonl", tmp_path / "x.jsonl")


def test_cancelled_split_leaves_nothing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "big.jsonl", [row(i) for i in range(2500)])
    out = tmp_path / "out"
    with pytest.raises(JobCancelled):
        split_dataset(data, out / "t.jsonl", out / "e.jsonl", should_stop=lambda: True)
    assert not out.exists() or list(out.iterdir()) == []


def test_shared_dataset(shared_datasets: Path, tmp_path: Path) -> None:
    result = split_dataset(
        shared_datasets / "glaive_toolcall_en_demo.json",
        tmp_path / "t.jsonl",
        tmp_path / "e.jsonl",
        eval_count=30,
    )
    assert (result.train_count, result.eval_count) == (270, 30)
    first = json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])
    assert "tools" in first and first["conversations"]
