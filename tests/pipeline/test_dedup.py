"""Exact and near-duplicate removal: rules, first occurrence kept, files, cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.data.dedup import (
    Deduplicator,
    _HashIndex,
    dedup_conversations,
    dedup_dataset,
    default_removed_path,
)
from pipeline.data.types import Conversation, Turn
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import Event, Progress, StageDone

LONG = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
    "drinking coffee and thinking about the harvest that will come in the autumn months when "
    "the leaves turn red and gold and the nights grow long and cold across the valley."
)


def qa(q: str, a: str) -> Conversation:
    return Conversation((Turn("user", q), Turn("model", a)))


def test_exact_duplicates_after_whitespace_and_case_normalisation() -> None:
    convs = [
        qa("What is 2+2?", "Four."),
        qa("what  is\t2+2?\n", "  FOUR. "),
        qa("What is 3+3?", "Six."),
        qa("What is 2+2?", "Four."),
    ]
    kept, removed = dedup_conversations(convs)
    assert kept == [convs[0], convs[2]]
    assert [(d.index, d.of, d.rule, d.jaccard) for d in removed] == [
        (1, 0, "exact", 1.0),
        (3, 0, "exact", 1.0),
    ]


def test_roles_system_and_tools_are_part_of_the_identity() -> None:
    base = qa("Hello there", "General Kenobi")
    swapped = Conversation((Turn("user", "General Kenobi"), Turn("model", "Hello there")))
    with_system = Conversation((Turn("system", "Be nice"), *base.turns))
    with_tools = Conversation(base.turns, tools='[{"name": "f"}]')
    kept, removed = dedup_conversations([base, swapped, with_system, with_tools])
    assert len(kept) == 4 and removed == []


def test_near_duplicates_are_removed_with_their_estimated_jaccard() -> None:
    near = LONG.replace("coffee", "tea")
    convs = [qa("Tell me a story", LONG), qa("Tell me a story", near), qa("Other", "Unrelated.")]
    kept, removed = dedup_conversations(convs, near_threshold=0.8)
    assert kept == [convs[0], convs[2]]
    (dup,) = removed
    assert (dup.index, dup.of, dup.rule) == (1, 0, "near")
    assert 0.8 <= dup.jaccard < 1.0
    # Switched off, or stricter than the similarity: kept.
    assert dedup_conversations(convs, near_threshold=None)[1] == []
    assert dedup_conversations(convs, near_threshold=0.97)[1] == []


def test_near_dedup_is_reproducible_for_a_seed() -> None:
    convs = [qa(f"q{i}", LONG.replace("fox", f"fox{i % 3}")) for i in range(30)]
    a = dedup_conversations(convs, near_threshold=0.7, seed=7)[1]
    b = dedup_conversations(convs, near_threshold=0.7, seed=7)[1]
    assert a == b and a


def test_removed_rows_point_at_kept_rows() -> None:
    convs = [qa("q", LONG), qa("q", LONG.replace("tea", "milk")), qa("Q", LONG)]
    kept_idx = set()
    dedup = Deduplicator(near_threshold=0.5)
    for i, c in enumerate(convs):
        dup = dedup.check(c)
        if dup is None:
            kept_idx.add(i)
        else:
            assert dup.of in kept_idx


def test_bad_parameters() -> None:
    with pytest.raises(DatasetError):
        Deduplicator(near_threshold=1.5)
    with pytest.raises(DatasetError):
        Deduplicator(num_perm=4)
    with pytest.raises(DatasetError, match="num_perm 128"):
        Deduplicator(near_threshold=0.99)  # too few permutations for two LSH bands


def test_hash_index_finds_keys_before_and_after_merging() -> None:
    index = _HashIndex(merge_every=4)
    keys = [2**64 - 1, 0, 12345, 2**63, 7, 99, 2**40 + 3, 5, 1]
    for i, k in enumerate(keys):
        assert index.get(k) is None
        index.add(k, i)
    assert len(index) == len(keys)
    for i, k in enumerate(keys):
        assert index.get(k) == i
    assert index.get(424242) is None


# --------------------------------------------------------------------------- files


def sharegpt(q: str, a: str) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rows: list[Any] = [
        sharegpt("What is 2+2?", "Four."),  # line 1
        sharegpt("Tell me a story", LONG),  # line 2
        sharegpt("WHAT is 2+2? ", "four."),  # line 3: exact dup of line 1
        "{not json",  # line 4: invalid
        sharegpt("Tell me a story", LONG.replace("coffee", "tea")),  # line 5: near dup of 2
        sharegpt("Something else", "Entirely."),  # line 6
    ]
    return write_jsonl(tmp_path / "data.jsonl", rows)


def test_dedup_dataset_writes_kept_and_removed_rows(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "dedup.jsonl"
    events: list[Event] = []
    result = dedup_dataset(dataset, out, near_threshold=0.8, on_event=events.append)
    assert (result.total, result.kept, result.exact_removed, result.near_removed) == (5, 3, 1, 1)
    assert result.invalid == 1
    assert result.removed == default_removed_path(out) == tmp_path / "out" / "dedup.removed.jsonl"
    kept = read_jsonl(out)
    assert [r["conversations"][0]["value"] for r in kept] == [
        "What is 2+2?",
        "Tell me a story",
        "Something else",
    ]
    removed = read_jsonl(result.removed)
    assert [(r["source"]["line"], r["duplicate_of"]["line"], r["rule"]) for r in removed] == [
        (3, 1, "exact"),
        (5, 2, "near"),
    ]
    assert removed[0]["jaccard"] == 1.0 and 0.8 <= removed[1]["jaccard"] < 1.0
    assert removed[0]["source"]["path"] == str(dataset)
    assert removed[1]["row"]["conversations"][1]["value"].endswith("valley.")
    assert any(isinstance(e, StageDone) and e.stage == "dedup" for e in events)
    assert any(isinstance(e, Progress) for e in events)
    assert sorted(p.name for p in out.parent.iterdir()) == ["dedup.jsonl", "dedup.removed.jsonl"]


def test_dedup_dataset_exact_only(dataset: Path, tmp_path: Path) -> None:
    result = dedup_dataset(dataset, tmp_path / "o.jsonl", near_threshold=None)
    assert (result.kept, result.exact_removed, result.near_removed) == (4, 1, 0)


def test_dedup_dataset_refuses_to_write_over_its_input(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="input"):
        dedup_dataset(dataset, dataset)
    with pytest.raises(DatasetError, match="input"):
        dedup_dataset(dataset, tmp_path / "o.jsonl", removed=dataset)
    with pytest.raises(DatasetError, match="same file"):
        dedup_dataset(dataset, tmp_path / "o.jsonl", removed=tmp_path / "o.jsonl")


def test_cancelled_dedup_leaves_no_output(tmp_path: Path) -> None:
    rows = [sharegpt(f"question {i}", f"answer {i}") for i in range(2500)]
    data = write_jsonl(tmp_path / "big.jsonl", rows)
    out_dir = tmp_path / "out"
    with pytest.raises(JobCancelled):
        dedup_dataset(data, out_dir / "o.jsonl", should_stop=lambda: True)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_shared_datasets(shared_datasets: Path, tmp_path: Path) -> None:
    result = dedup_dataset(shared_datasets / "alpaca_en_demo.json", tmp_path / "a.jsonl")
    # The LLaMA-Factory demo holds 14 exact repeats of earlier rows.
    assert (result.total, result.exact_removed, result.near_removed) == (999, 14, 0)
    assert len(read_jsonl(tmp_path / "a.jsonl")) == 985
