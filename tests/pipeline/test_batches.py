"""Batches: truncation rule, row layout (targets, masks, segments, positions), packing,
seeded order, exact resume, eval batches, the example file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.formatter import END_OF_TURN, format_conversation
from pipeline.data.types import Conversation, Turn
from pipeline.errors import DatasetError, TrainingError
from pipeline.models.tokenizer import GemmaTokenizer, load_tokenizer
from pipeline.training.batches import (
    BATCH_KEYS,
    BatchStream,
    Example,
    ExampleBuilder,
    ExampleSet,
    batch_counts,
    build_rows,
    eval_batches,
    load_examples,
    pack_best_fit,
    save_examples,
    tokenize_conversations,
    truncate_examples,
)

S = 16


@pytest.fixture(scope="module")
def tokenizer() -> GemmaTokenizer:
    return load_tokenizer()  # the real tokenizer, cached in the workspace


def example(n: int, trained_from: int = 1, *, start: int = 0) -> Example:
    """``n`` distinct ids (start + 10.. ); mask True from ``trained_from`` on."""
    ids = np.arange(start + 10, start + 10 + n, dtype=np.int32)
    mask = np.arange(n) >= trained_from
    return Example(ids, mask)


def random_set(count: int, seed: int, max_len: int = S + 1) -> ExampleSet:
    """Examples of random lengths 2..max_len with distinct ids and random masks (>= 1 target)."""
    rng = np.random.default_rng(seed)
    out = []
    next_id = 1000
    for _ in range(count):
        n = int(rng.integers(2, max_len + 1))
        ids = np.arange(next_id, next_id + n, dtype=np.int32)
        next_id += n
        mask = rng.random(n) < 0.6
        mask[0] = False
        mask[rng.integers(1, n)] = True
        out.append(Example(ids, mask))
    return ExampleSet.of(out)


def decode_rows(batch: dict[str, np.ndarray]) -> list[tuple[list[int], list[bool]]]:
    """Each segment of each row back as (ids, mask): inputs + last target, mask of targets."""
    out = []
    for r in range(batch["token_ids"].shape[0]):
        seg = batch["segment_ids"][r]
        for k in range(1, int(seg.max(initial=0)) + 1):
            where = np.flatnonzero(seg == k)
            assert where.size and np.all(np.diff(where) == 1), "a segment is contiguous"
            assert batch["positions"][r, where].tolist() == list(range(where.size))
            ids = [*batch["token_ids"][r, where].tolist(), int(batch["targets"][r, where[-1]])]
            assert batch["targets"][r, where[:-1]].tolist() == ids[1:-1]
            mask = [False, *(batch["loss_mask"][r, where] == 1).tolist()]
            out.append((ids, mask))
        pad = seg == 0
        for key in BATCH_KEYS:
            assert not batch[key][r, pad].any(), f"padding of {key} is 0"
    return out


def as_key(ids: np.ndarray | list[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in ids)


# --------------------------------------------------------------------------- truncation


def test_truncation_keeps_first_s_plus_one_tokens_and_drops_untrained() -> None:
    b = ExampleBuilder(S)
    b.add(
        [
            (list(range(S + 1)), [False] + [True] * S),  # exactly S+1: kept whole
            (list(range(S + 5)), [False] + [True] * (S + 4)),  # cut to S+1
            (list(range(S + 5)), [False] * (S + 1) + [True] * 4),  # trained part cut: dropped
            (list(range(S + 5)), [False] * S + [True] * 5),  # token S is trained: kept
            ([2], [False]),  # nothing to predict: dropped
            ([2, 5, 6], [False, False, False]),  # nothing trained: dropped
        ]
    )
    ex = b.build()
    assert b.row_example.tolist() == [0, 1, -1, 2, -1, -1]
    assert b.row_truncated.tolist() == [False, True, True, True, False, False]
    assert ex.lengths.tolist() == [S + 1, S + 1, S + 1]
    assert ex.trained_per_example().tolist() == [S, S, 1]
    assert ex[1].ids.tolist() == list(range(S + 1))


def test_stats_truncation_rule_is_the_trainers(tokenizer: GemmaTokenizer) -> None:
    """pipeline/data/stats.py and the trainer keep S + 1 tokens: stats at max_seq_len = S
    counts exactly what the trainer at sequence_length = S truncates and drops."""
    from pipeline.data.stats import conversation_stats

    convs = [qa("word " * k, "reply " * (30 - k)) for k in range(1, 30, 3)]
    full = tokenize_conversations(convs, tokenizer, sequence_length=4096).examples
    for s in (8, 20, 40):
        got = tokenize_conversations(convs, tokenizer, sequence_length=s)
        again = truncate_examples(full, s)  # the same rule on examples tokenized earlier
        assert np.array_equal(again.examples.ids, got.examples.ids)
        assert (again.truncated, again.dropped_untrained) == (got.truncated, got.dropped_untrained)
        stats = conversation_stats(convs, tokenizer=tokenizer, max_seq_len=s)
        assert got.truncated == stats.truncated
        assert got.dropped_untrained == stats.lost_all_trained
        assert got.trained_tokens == stats.kept_trained_tokens


# ------------------------------------------------------------ masks with the template


def qa(q: str, a: str) -> Conversation:
    return Conversation((Turn("user", q), Turn("model", a)))


def test_masks_line_up_with_trained_spans(tokenizer: GemmaTokenizer) -> None:
    conv = Conversation(
        (
            Turn("system", "Be brief."),
            Turn("user", "What is 2+2?"),
            Turn("model", "4."),
            Turn("user", "And 3+3?"),
            Turn("model", "6, of course."),
        )
    )
    got = tokenize_conversations([conv], tokenizer, sequence_length=256)
    ex = got.examples[0]
    assert ex.ids.tolist() == tokenizer.encode(format_conversation(conv).text)
    trained = [tokenizer.decode([int(i)]) for i in ex.ids[ex.mask]]
    assert "".join(trained) == f"4.{END_OF_TURN}6, of course.{END_OF_TURN}"
    assert trained.count(END_OF_TURN) == 2  # the model learns to stop

    # train_on_prompt: everything after <bos>, user text included.
    top = tokenize_conversations([conv], tokenizer, sequence_length=256, train_on_prompt=True)
    ex2 = top.examples[0]
    assert ex2.mask.tolist() == [False] + [True] * (len(ex2) - 1)
    assert "What is 2+2?" in tokenizer.decode(ex2.ids[ex2.mask].tolist())

    # In a batch row, loss_mask[t] is the mask of targets[t] = ids[t + 1].
    batch = build_rows(ExampleSet.of([ex]), np.array([0]), np.array([0, 1]), 256)
    n = len(ex) - 1
    assert batch["token_ids"][0, :n].tolist() == ex.ids[:-1].tolist()
    assert batch["targets"][0, :n].tolist() == ex.ids[1:].tolist()
    assert batch["loss_mask"][0, :n].tolist() == ex.mask[1:].astype(float).tolist()
    assert batch["loss_mask"][0, n:].sum() == 0


# --------------------------------------------------------------------------- rows and packing


def test_rows_segments_positions_and_padding() -> None:
    data = ExampleSet.of([example(5, 2), example(4, 1, start=100), example(3, 2, start=200)])
    batch = build_rows(data, np.array([0, 1, 2]), np.array([0, 2, 3]), 10, num_rows=3)
    assert batch["token_ids"].shape == (3, 10)
    assert {k: v.dtype.name for k, v in batch.items()} == {
        "token_ids": "int32",
        "targets": "int32",
        "loss_mask": "float32",
        "segment_ids": "int32",
        "positions": "int32",
    }
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert batch["positions"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 0]
    assert batch["token_ids"][0].tolist() == [10, 11, 12, 13, 110, 111, 112, 0, 0, 0]
    # The last token of example 1 (14) is a target, never an input: nothing predicts 110.
    assert batch["targets"][0].tolist() == [11, 12, 13, 14, 111, 112, 113, 0, 0, 0]
    assert batch["loss_mask"][0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["segment_ids"][1].tolist() == [1, 1] + [0] * 8
    assert not any(batch[k][2].any() for k in BATCH_KEYS)  # an empty row
    assert batch["loss_mask"][1, :2].tolist() == [0, 1]
    assert batch_counts(batch) == (9, 7)


def test_best_fit_decreasing_packs_tightly() -> None:
    assert pack_best_fit([6, 5, 4, 4, 1], 10).tolist() == [0, 1, 0, 1, 1]
    rng = np.random.default_rng(0)
    sizes = np.sort(rng.integers(1, 400, 2000))[::-1]
    rows = pack_best_fit(sizes, 1024)
    used = np.bincount(rows, weights=sizes)
    assert used.max() <= 1024
    assert rows.max() + 1 <= int(np.ceil(sizes.sum() / 1024)) + 2  # within 2 of the bound
    with pytest.raises(ValueError):
        pack_best_fit([11], 10)


@pytest.mark.parametrize("packing", [True, False])
def test_every_epoch_holds_every_example_once_and_no_target_crosses(packing: bool) -> None:
    data = random_set(57, seed=3)
    want = sorted(as_key(e.ids) for e in data)
    masks = {as_key(e.ids): e.mask.tolist() for e in data}
    stream = BatchStream(data, batch_size=1, sequence_length=S, packing=packing, seed=7)
    rows = stream.rows_per_epoch
    assert rows < len(data) if packing else rows == len(data)
    for epoch in range(2):
        seen = []
        for _ in range(rows):
            for ids, mask in decode_rows(stream.next_batch()):
                assert mask == masks[as_key(ids)]  # the whole example, with its own mask
                seen.append(as_key(ids))
        assert sorted(seen) == want, f"epoch {epoch}"
        assert stream.state()["epoch"] == epoch + 1 and stream.state()["position"] == 0


def test_packing_is_denser_than_one_example_per_row() -> None:
    data = random_set(300, seed=1, max_len=S // 2)
    packed = BatchStream(data, batch_size=4, sequence_length=S, packing=True, seed=0)
    single = BatchStream(data, batch_size=4, sequence_length=S, packing=False, seed=0)
    pairs = int((data.lengths - 1).sum())
    assert packed.rows_per_epoch < single.rows_per_epoch / 2
    assert pairs / (packed.rows_per_epoch * S) > 0.95


# --------------------------------------------------------------------------- order and resume


def batches(stream: BatchStream, n: int) -> list[dict[str, np.ndarray]]:
    return [stream.next_batch() for _ in range(n)]


def same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x[k], y[k]) for k in BATCH_KEYS) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("packing", [True, False])
def test_order_is_seeded_and_changes_per_epoch(packing: bool) -> None:
    data = random_set(40, seed=5)

    def make(seed: int) -> BatchStream:
        return BatchStream(data, batch_size=3, sequence_length=S, packing=packing, seed=seed)

    first = batches(make(11), 30)
    assert same(first, batches(make(11), 30))
    assert not same(first, batches(make(12), 30))
    per_epoch = -(-make(11).rows_per_epoch // 3)
    assert not np.array_equal(first[0]["token_ids"], first[per_epoch]["token_ids"])


@pytest.mark.parametrize(("packing", "drop_last"), [(True, False), (False, False), (True, True)])
def test_restore_resumes_exactly(packing: bool, drop_last: bool) -> None:
    data = random_set(45, seed=9)
    kw = {"batch_size": 4, "sequence_length": S, "packing": packing, "drop_last": drop_last}
    original = BatchStream(data, seed=21, **kw)
    per_epoch = original.rows_per_epoch
    for skip in (0, 1, per_epoch // 4, per_epoch // 4 + 1, 3 * per_epoch // 4):
        original = BatchStream(data, seed=21, **kw)
        batches(original, skip)
        state = json.loads(json.dumps(original.state()))  # as a checkpoint stores it
        resumed = BatchStream(data, seed=999, **kw)  # the state's seed wins
        resumed.restore(state)
        assert same(
            batches(resumed, 2 * per_epoch // 4 + 3), batches(original, 2 * per_epoch // 4 + 3)
        )


def test_restore_refuses_other_data_or_settings() -> None:
    data = random_set(30, seed=2)
    stream = BatchStream(data, batch_size=2, sequence_length=S, packing=True, seed=1)
    batches(stream, 3)
    state = stream.state()
    assert set(state) >= {"epoch", "position", "seed"}
    other = BatchStream(
        random_set(31, seed=2), batch_size=2, sequence_length=S, packing=True, seed=1
    )
    with pytest.raises(TrainingError, match="differ"):
        other.restore(state)
    unpacked = BatchStream(data, batch_size=2, sequence_length=S, packing=False, seed=1)
    with pytest.raises(TrainingError):
        unpacked.restore(state)
    with pytest.raises(TrainingError, match="unreadable"):
        stream.restore({"epoch": 1})


def test_drop_last_never_spans_epochs_and_step_helpers() -> None:
    data = ExampleSet.of([example(S + 1, start=100 * i) for i in range(10)])  # 10 full rows
    stream = BatchStream(data, batch_size=4, sequence_length=S, packing=True, seed=0)
    assert stream.rows_per_epoch == 10
    assert stream.steps_per_epoch(8) == 1.25
    assert stream.total_steps(1, 8) == 2 and stream.total_steps(2, 8) == 3
    assert stream.total_steps(0.01, 8) == 1
    dropping = BatchStream(
        data, batch_size=4, sequence_length=S, packing=True, seed=0, drop_last=True
    )
    assert dropping.steps_per_epoch(4) == 2
    seen = [dropping.state()["epoch"]]
    for _ in range(4):
        batch = dropping.next_batch()
        assert (batch["segment_ids"] > 0).all()  # full rows only
        seen.append(dropping.state()["epoch"])
    assert seen == [0, 0, 0, 1, 1]
    # Without drop_last a batch takes its last rows from the next epoch.
    batches(stream, 2)
    assert stream.state()["position"] == 8
    stream.next_batch()
    assert (stream.state()["epoch"], stream.state()["position"]) == (1, 2)
    with pytest.raises(DatasetError, match="fewer than batch_size"):
        BatchStream(data, batch_size=11, sequence_length=S, packing=True, seed=0, drop_last=True)


def test_bad_inputs() -> None:
    with pytest.raises(DatasetError, match="no training examples"):
        BatchStream([], batch_size=2, sequence_length=S, packing=True, seed=0)
    with pytest.raises(ValueError, match="truncation"):
        BatchStream([example(S + 2)], batch_size=2, sequence_length=S, packing=True, seed=0)


# --------------------------------------------------------------------------- eval and files


@pytest.mark.parametrize("packing", [True, False])
def test_eval_batches_are_fixed_and_padded(packing: bool) -> None:
    data = random_set(23, seed=4)
    first = list(eval_batches(data, 4, S, packing))
    assert same(first, list(eval_batches(data, 4, S, packing)))
    seen = [as_key(ids) for b in first for ids, _ in decode_rows(b)]
    assert sorted(seen) == sorted(as_key(e.ids) for e in data)
    rows = sum(int((b["segment_ids"] > 0).any(axis=1).sum()) for b in first)
    assert len(first) == -(-rows // 4)
    assert all(b["token_ids"].shape == (4, S) for b in first)
    last = first[-1]
    empty = ~(last["segment_ids"] > 0).any(axis=1)
    assert empty.sum() == 4 * len(first) - rows
    assert last["loss_mask"][empty].sum() == 0
    if not packing:  # one example per row, in input order
        assert as_key(decode_rows(first[0])[0][0]) == as_key(data[0].ids)
    assert list(eval_batches([], 4, S, packing)) == []


def test_save_and_load_examples(tmp_path: Path) -> None:
    data = random_set(20, seed=8)
    path = save_examples(tmp_path / "sub" / "ex.npz", data)
    back = load_examples(path)
    assert np.array_equal(back.ids, data.ids)
    assert np.array_equal(back.mask, data.mask)
    assert np.array_equal(back.offsets, data.offsets)
    assert [p.name for p in path.parent.iterdir()] == ["ex.npz"]  # no temporary left


def test_example_set_views() -> None:
    items = [example(3), example(5, 3, start=50), example(2, start=90)]
    data = ExampleSet.of(items)
    assert len(data) == 3 and data.tokens == 10
    assert data[-1].ids.tolist() == [100, 101]
    assert data[1:].lengths.tolist() == [5, 2]
    assert data.take([2, 0]).ids.tolist() == [100, 101, 10, 11, 12]
    assert data.trained_per_example().tolist() == [2, 2, 1]
    assert ExampleSet.of(data) is data
    with pytest.raises(IndexError):
        data[3]
