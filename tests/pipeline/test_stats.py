"""Token statistics: lengths with the template, truncation, trained share, invalid rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data.formatter import format_conversation
from pipeline.data.stats import DatasetStats, compute_stats, conversation_stats
from pipeline.data.types import Conversation, Turn
from pipeline.errors import JobCancelled
from pipeline.events import Event, Progress, StageDone
from pipeline.models.tokenizer import GemmaTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> GemmaTokenizer:
    # The real tokenizer, cached in the default workspace (built once, ~1 s).
    return load_tokenizer()


def qa(q: str, a: str) -> Conversation:
    return Conversation((Turn("user", q), Turn("model", a)))


CONVS = [
    qa("Hi", "Hello!"),
    qa("Count", " ".join(str(i) for i in range(60))),
    qa("word " * 80, "Short."),
    Conversation(
        (
            Turn("system", "Be brief."),
            Turn("user", "a"),
            Turn("model", "b"),
            Turn("user", "c"),
            Turn("model", "d e f"),
        )
    ),
]


def expected(tok: GemmaTokenizer, convs: list[Conversation], limit: int) -> dict[str, Any]:
    """The statistics, computed the slow obvious way: max_seq_len is the trainer's
    sequence_length, so an example keeps its first limit + 1 tokens."""
    total = trained = truncated = dropped = kept_trained = lost = 0
    lengths = []
    keep = limit + 1
    for c in convs:
        ids, mask = tok.encode_with_mask(format_conversation(c))
        lengths.append(len(ids))
        total += len(ids)
        trained += sum(mask)
        kept_trained += sum(mask[:keep])
        if len(ids) > keep:
            truncated += 1
            dropped += len(ids) - keep
            lost += int(sum(mask) > 0 and sum(mask[:keep]) == 0)
    return {
        "lengths": lengths,
        "total_tokens": total,
        "trained_tokens": trained,
        "truncated": truncated,
        "truncated_tokens": dropped,
        "kept_trained_tokens": kept_trained,
        "lost_all_trained": lost,
    }


@pytest.mark.parametrize("limit", [8, 40, 1024])
def test_conversation_stats_match_a_slow_count(tokenizer: GemmaTokenizer, limit: int) -> None:
    stats = conversation_stats(CONVS, tokenizer=tokenizer, max_seq_len=limit, batch_size=3)
    want = expected(tokenizer, CONVS, limit)
    assert stats.lengths.tolist() == want.pop("lengths")
    for key, value in want.items():
        assert getattr(stats, key) == value, key
    assert stats.examples == 4 and stats.invalid == 0
    assert stats.kept_tokens == stats.total_tokens - stats.truncated_tokens
    assert stats.trained_share == pytest.approx(stats.trained_tokens / stats.total_tokens)
    assert stats.trained_share_after_truncation == pytest.approx(
        stats.kept_trained_tokens / stats.kept_tokens
    )


def test_an_example_of_max_seq_len_plus_one_tokens_fits(tokenizer: GemmaTokenizer) -> None:
    # A row of S positions holds S + 1 tokens (inputs 0..S-1, targets 1..S): the trainer's rule.
    conv = CONVS[1]
    n = len(tokenizer.encode(format_conversation(conv).text))
    fits = conversation_stats([conv], tokenizer=tokenizer, max_seq_len=n - 1)
    assert (fits.truncated, fits.truncated_tokens, fits.kept_tokens) == (0, 0, n)
    assert fits.kept_trained_tokens == fits.trained_tokens
    cut = conversation_stats([conv], tokenizer=tokenizer, max_seq_len=n - 2)
    assert (cut.truncated, cut.truncated_tokens, cut.kept_tokens) == (1, 1, n - 1)
    assert cut.kept_trained_tokens == cut.trained_tokens  # the newline after <end_of_turn>
    cut = conversation_stats([conv], tokenizer=tokenizer, max_seq_len=n - 3)
    assert (cut.truncated, cut.truncated_tokens) == (1, 2)
    assert cut.kept_trained_tokens == cut.trained_tokens - 1  # <end_of_turn> is trained


@pytest.mark.parametrize("limit", [8, 20, 40, 1024])
def test_stats_count_what_the_trainer_truncates(tokenizer: GemmaTokenizer, limit: int) -> None:
    from pipeline.training.batches import tokenize_conversations

    stats = conversation_stats(CONVS, tokenizer=tokenizer, max_seq_len=limit)
    trainer = tokenize_conversations(CONVS, tokenizer, sequence_length=limit)
    assert stats.truncated == trainer.truncated
    assert stats.lost_all_trained == trainer.dropped_untrained
    assert stats.kept_trained_tokens == trainer.trained_tokens
    kept_rows = len(CONVS) - trainer.dropped_untrained
    assert kept_rows == len(trainer.examples)
    if not trainer.dropped_untrained:
        assert stats.kept_tokens == trainer.tokens


def test_truncation_can_remove_every_trained_token(tokenizer: GemmaTokenizer) -> None:
    stats = conversation_stats([CONVS[2]], tokenizer=tokenizer, max_seq_len=40)
    assert stats.truncated == 1 and stats.lost_all_trained == 1
    assert stats.kept_trained_tokens == 0 and stats.trained_share_after_truncation == 0.0


def test_summary_and_histogram(tokenizer: GemmaTokenizer) -> None:
    stats = conversation_stats(CONVS, tokenizer=tokenizer)
    lengths = stats.lengths
    s = stats.summary
    assert lengths.dtype == np.int32
    assert (s.count, s.min, s.max) == (4, lengths.min(), lengths.max())
    assert s.mean == pytest.approx(lengths.mean())
    assert s.median == pytest.approx(np.median(lengths))
    assert s.p90 == pytest.approx(np.percentile(lengths, 90))
    assert s.p99 == pytest.approx(np.percentile(lengths, 99))
    counts, edges = stats.histogram(bins=5)
    assert counts.sum() == 4 and len(edges) == 6
    assert json.dumps(stats.to_dict())  # JSON-ready


def test_train_on_prompt_trains_all_but_bos(tokenizer: GemmaTokenizer) -> None:
    stats = conversation_stats(CONVS, tokenizer=tokenizer, train_on_prompt=True)
    assert stats.trained_tokens == stats.total_tokens - stats.examples


def test_empty_input(tokenizer: GemmaTokenizer) -> None:
    stats = conversation_stats([], tokenizer=tokenizer)
    assert stats.examples == 0 and stats.summary.count == 0 and stats.trained_share == 0.0
    counts, _ = stats.histogram()
    assert counts.sum() == 0


def test_events_and_cancel(tokenizer: GemmaTokenizer) -> None:
    events: list[Event] = []
    conversation_stats(CONVS, tokenizer=tokenizer, on_event=events.append)
    assert isinstance(events[-1], StageDone) and events[-1].stage == "stats"
    assert any(isinstance(e, Progress) and e.unit == "rows" for e in events)
    with pytest.raises(JobCancelled):
        conversation_stats(CONVS, tokenizer=tokenizer, should_stop=lambda: True)


# --------------------------------------------------------------------------- files


def test_compute_stats_skips_and_counts_invalid_rows(
    tokenizer: GemmaTokenizer, tmp_path: Path
) -> None:
    rows = [
        {"instruction": "Hi", "input": "", "output": "Hello!"},
        "{broken",
        {"instruction": "Count", "input": "", "output": " ".join(str(i) for i in range(60))},
        {"instruction": "", "input": "", "output": "no instruction"},
    ]
    path = tmp_path / "a.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    stats = compute_stats(path, tokenizer=tokenizer, max_seq_len=40)
    assert stats.examples == 2 and stats.invalid == 2
    assert stats.sources == (str(path),)
    again = conversation_stats(CONVS[:2], tokenizer=tokenizer, max_seq_len=40)
    assert stats.lengths.tolist() == again.lengths.tolist()
    assert stats.truncated == again.truncated == 1


def test_shared_datasets(tokenizer: GemmaTokenizer, shared_datasets: Path) -> None:
    events: list[Event] = []
    stats: DatasetStats = compute_stats(
        shared_datasets / "glaive_toolcall_en_demo.json",
        tokenizer=tokenizer,
        max_seq_len=512,
        on_event=events.append,
    )
    assert stats.examples == 300 and stats.invalid == 0
    assert 0.0 < stats.trained_share < 1.0
    assert stats.tokens_per_second > 0 and stats.tokenize_seconds > 0
    assert any(isinstance(e, Progress) and e.unit == "bytes" for e in events)
