"""Tokenized examples -> fixed-shape numpy batches: truncation, packing, seeded order, resume.

Pure numpy; no jax or keras. Contract (docs/training-api.md, "Batches")::

    tokenize_conversations(conversations, tokenizer, *, sequence_length, train_on_prompt)
        -> TokenizedSet(examples, truncated, dropped_untrained, tokens, trained_tokens)
    Example(ids: int32[n], mask: bool[n])      # mask[t]: token t is a trained target
    BatchStream(examples, *, batch_size, sequence_length, packing, seed, drop_last=False)
        .next_batch() -> dict of arrays [batch_size, S]; .state() / .restore(state)
    eval_batches(examples, batch_size, sequence_length, packing) -> Iterator[dict]
    save_examples(path, examples) / load_examples(path) -> ExampleSet
    truncate_examples(examples, sequence_length) -> TokenizedSet

**Truncation.** An example keeps its first ``S + 1`` tokens (``S = sequence_length``): a row
predicts tokens ``1..S`` from tokens ``0..S-1``, so ``<bos>`` stays. An example that had more
is counted as truncated. An example with no trained target left (``mask[1:]`` all False) is
dropped and counted; it would teach nothing. (``mask[0]`` is ``<bos>``, never a target.)

**Rows.** An example of ``n`` tokens is ``n - 1`` (input, target) pairs: input ``ids[t]``,
target ``ids[t + 1]``, trained iff ``mask[t + 1]``. A row holds ``S`` pairs:

* ``token_ids`` int32[S]: inputs, 0 (``<pad>``) in padding;
* ``targets`` int32[S]: the next token of the same example, 0 in padding;
* ``loss_mask`` float32[S]: 1 where ``targets[t]`` is a trained token, else 0 (padding 0);
* ``segment_ids`` int32[S]: 0 for padding, 1, 2, ... for the examples in the row;
* ``positions`` int32[S]: 0, 1, ... restarting at each example; 0 in padding.

Because the pairs of an example are placed together, no target ever belongs to another
example: the last token of an example is never an input (it has no target in the example),
so it is never asked to predict the next example's ``<bos>``. Without packing a row holds one
example, padded. With packing several examples share a row (attention stays inside a segment).

**Packing** is best-fit decreasing over the pair counts, which fills rows to ~99% on
instruction data: examples are taken longest first, each into the open row with the least room
that fits it. The assignment depends only on the lengths, so it is computed once and every
epoch has the same number of rows. Per epoch, a generator seeded with ``(seed, epoch)``
shuffles the examples before the (stable) sort, so equally long examples trade places between
rows, then shuffles the order of the rows. Without packing the epoch is a seeded permutation of
the examples. Either way an epoch is a pure function of ``(examples, seed, epoch)``, which is
what makes :meth:`BatchStream.state` / :meth:`BatchStream.restore` exact.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import numpy as np

from pipeline.errors import DatasetError, TrainingError

if TYPE_CHECKING:
    from pipeline.data.types import Conversation
    from pipeline.models.tokenizer import GemmaTokenizer

Batch = dict[str, np.ndarray]
"""``token_ids``, ``targets``, ``segment_ids``, ``positions`` (int32) and ``loss_mask``
(float32), each of shape ``[batch_size, sequence_length]``."""
BATCH_KEYS = ("token_ids", "targets", "loss_mask", "segment_ids", "positions")
PAD_ID = 0
TOKENIZE_BATCH = 1000
"""Conversations per tokenizer call in :func:`tokenize_conversations`."""
STATE_VERSION = 1


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True, slots=True, eq=False)
class Example:
    """One tokenized conversation: ``ids`` int32[n], ``mask`` bool[n] (token t is trained)."""

    ids: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def trained(self) -> int:
        """Trained targets: ``mask[1:]`` (token 0 is never predicted)."""
        return int(np.count_nonzero(self.mask[1:]))


class ExampleSet(Sequence[Example]):
    """Examples stored flat: ``ids`` int32[T], ``mask`` bool[T], ``offsets`` int64[N + 1]
    (example i is ``ids[offsets[i]:offsets[i + 1]]``). Indexing gives :class:`Example` views."""

    __slots__ = ("ids", "mask", "offsets")

    def __init__(self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        mask = np.ascontiguousarray(mask, dtype=bool)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if ids.ndim != 1 or mask.shape != ids.shape or offsets.ndim != 1 or offsets.size < 1:
            raise ValueError("ExampleSet needs 1-D ids and mask of one length and 1-D offsets")
        if offsets[0] != 0 or offsets[-1] != ids.size or np.any(np.diff(offsets) < 0):
            raise ValueError("ExampleSet offsets must rise from 0 to len(ids)")
        self.ids = ids
        self.mask = mask
        self.offsets = offsets

    @classmethod
    def empty(cls) -> ExampleSet:
        return cls(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(1, np.int64))

    @classmethod
    def of(cls, examples: Iterable[Example] | ExampleSet) -> ExampleSet:
        """``examples`` as an ExampleSet (returned as is when it already is one)."""
        if isinstance(examples, ExampleSet):
            return examples
        items = list(examples)
        if not items:
            return cls.empty()
        lengths = np.fromiter((len(e) for e in items), dtype=np.int64, count=len(items))
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            np.concatenate([np.asarray(e.ids, np.int32) for e in items]),
            np.concatenate([np.asarray(e.mask, bool) for e in items]),
            offsets,
        )

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> ExampleSet: ...
    def __getitem__(self, index: int | slice) -> Example | ExampleSet:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"example {index} out of range ({n} examples)")
        index %= n
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return Example(self.ids[a:b], self.mask[a:b])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example (int64)."""
        return np.diff(self.offsets)

    @property
    def tokens(self) -> int:
        return int(self.ids.size)

    def trained_per_example(self) -> np.ndarray:
        """Trained targets per example (``mask[1:]`` of each), int64."""
        cum = np.zeros(self.mask.size + 1, np.int64)
        np.cumsum(self.mask, out=cum[1:])
        starts, ends = self.offsets[:-1], self.offsets[1:]
        first = np.zeros(len(self), np.int64)
        nonempty = ends > starts
        first[nonempty] = self.mask[starts[nonempty]]
        return cum[ends] - cum[starts] - first

    @property
    def trained_tokens(self) -> int:
        return int(self.trained_per_example().sum())

    def take(self, indices: np.ndarray | Sequence[int]) -> ExampleSet:
        """The examples at ``indices``, in that order, as a new (copied) set."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        lengths = self.lengths[idx]
        offsets = np.zeros(idx.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        src = _segment_index(self.offsets[idx], lengths)
        return ExampleSet(self.ids[src], self.mask[src], offsets)

    def fingerprint(self) -> str:
        """A short hash of the lengths and a checksum of the ids (cheap; for resume checks)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(self.lengths.astype("<i8").tobytes())
        h.update(int(self.ids.sum(dtype=np.uint64)).to_bytes(8, "little"))
        h.update(int(np.count_nonzero(self.mask)).to_bytes(8, "little"))
        return h.hexdigest()


def _segment_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    return np.repeat(starts, lengths) + within


def save_examples(path: str | Path, examples: Iterable[Example] | ExampleSet) -> Path:
    """Write ``examples`` to a compressed ``.npz`` (``ids``, ``mask``, ``offsets``) atomically.

    :func:`load_examples` reads it back without the tokenizer (e.g. on the GPU machine).
    """
    path = Path(path)
    data = ExampleSet.of(examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                ids=data.ids,
                mask=np.packbits(data.mask),
                mask_size=np.int64(data.mask.size),
                offsets=data.offsets,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_examples(path: str | Path) -> ExampleSet:
    """Examples written by :func:`save_examples`."""
    with np.load(Path(path)) as npz:
        size = int(npz["mask_size"])
        mask = np.unpackbits(npz["mask"], count=size).astype(bool)
        return ExampleSet(npz["ids"], mask, npz["offsets"])


# --------------------------------------------------------------------------- truncation


class ExampleBuilder:
    """Collects tokenized examples, applying the truncation rule and dropping untrained ones.

    Each :meth:`add` call takes ``(ids, mask)`` pairs (one per conversation, "row"); for every
    row it records whether it was truncated and which example it became (-1: dropped).
    """

    def __init__(self, sequence_length: int) -> None:
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
        self.sequence_length = sequence_length
        self._ids: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._row_example: list[np.ndarray] = []
        self._row_truncated: list[np.ndarray] = []
        self._examples = 0

    def add(self, encoded: Sequence[tuple[Sequence[int] | np.ndarray, Any]]) -> None:
        """Add one batch of ``(ids, mask)`` pairs (lists or arrays)."""
        rows = len(encoded)
        n = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=rows)
        if any(len(mask) != k for (_, mask), k in zip(encoded, n.tolist(), strict=True)):
            raise ValueError("every row needs as many mask values as ids")
        total = int(n.sum())
        parts = [i for i, _ in encoded]
        if parts and all(isinstance(i, np.ndarray) for i in parts):
            ids = np.concatenate(parts).astype(np.int32, copy=False)
        else:
            ids = np.fromiter(chain.from_iterable(parts), dtype=np.int32, count=total)
        mask = (
            np.concatenate([np.asarray(m, dtype=bool) for _, m in encoded])
            if rows
            else np.zeros(0, bool)
        )
        starts = np.cumsum(n) - n
        keep = np.minimum(n, self.sequence_length + 1)
        # Trained targets within the kept part: mask[start + 1 : start + keep].
        cum = np.zeros(total + 1, np.int64)
        np.cumsum(mask, out=cum[1:])
        trained = cum[starts + keep] - cum[np.minimum(starts + 1, starts + keep)]
        kept = (keep >= 2) & (trained > 0)
        row_example = np.full(rows, -1, np.int64)
        row_example[kept] = self._examples + np.arange(int(kept.sum()))
        if kept.any():
            src = _segment_index(starts[kept], keep[kept])
            self._ids.append(ids[src])
            self._mask.append(mask[src])
            self._lengths.append(keep[kept])
            self._examples += int(kept.sum())
        self._row_example.append(row_example)
        self._row_truncated.append(n > keep)

    @property
    def rows(self) -> int:
        return sum(a.size for a in self._row_example)

    @property
    def row_example(self) -> np.ndarray:
        """Example index of each row added, -1 where the row was dropped (int64)."""
        return np.concatenate(self._row_example) if self._row_example else np.zeros(0, np.int64)

    @property
    def row_truncated(self) -> np.ndarray:
        """Whether each row added was longer than ``sequence_length + 1`` tokens."""
        return np.concatenate(self._row_truncated) if self._row_truncated else np.zeros(0, bool)

    def build(self) -> ExampleSet:
        """Every kept example, in the order added."""
        if not self._lengths:
            return ExampleSet.empty()
        lengths = np.concatenate(self._lengths)
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return ExampleSet(np.concatenate(self._ids), np.concatenate(self._mask), offsets)


@dataclass(frozen=True, slots=True)
class TokenizedSet:
    """Examples ready for :class:`BatchStream`, and what truncation did to them."""

    examples: ExampleSet
    truncated: int
    """Conversations longer than ``sequence_length + 1`` tokens (cut), dropped ones included."""
    dropped_untrained: int
    """Conversations dropped because no trained target was left."""

    @property
    def tokens(self) -> int:
        """Tokens kept (after truncation) in the examples."""
        return self.examples.tokens

    @property
    def trained_tokens(self) -> int:
        """Trained targets kept in the examples."""
        return self.examples.trained_tokens


def truncate_examples(
    examples: Iterable[Example] | ExampleSet, sequence_length: int
) -> TokenizedSet:
    """Apply the truncation rule to examples tokenized earlier (e.g. :func:`load_examples` of
    full-length examples, to try several sequence lengths)."""
    data = ExampleSet.of(examples)
    builder = ExampleBuilder(sequence_length)
    for start in range(0, len(data), TOKENIZE_BATCH):
        builder.add([(e.ids, e.mask) for e in data[start : start + TOKENIZE_BATCH]])
    return TokenizedSet(
        examples=builder.build(),
        truncated=int(np.count_nonzero(builder.row_truncated)),
        dropped_untrained=int(np.count_nonzero(builder.row_example < 0)),
    )


def tokenize_conversations(
    conversations: Iterable[Conversation],
    tokenizer: GemmaTokenizer,
    *,
    sequence_length: int,
    train_on_prompt: bool = False,
) -> TokenizedSet:
    """Format each conversation with the Gemma 3 template, tokenize it with its loss mask and
    apply the truncation rule (see the module docstring)."""
    from pipeline.data.formatter import format_conversation

    builder = ExampleBuilder(sequence_length)
    batch: list[Conversation] = []

    def flush() -> None:
        formatted = [format_conversation(c, train_on_prompt=train_on_prompt) for c in batch]
        builder.add(tokenizer.encode_batch_with_mask(formatted))
        batch.clear()

    for conv in conversations:
        batch.append(conv)
        if len(batch) >= TOKENIZE_BATCH:
            flush()
    if batch:
        flush()
    return TokenizedSet(
        examples=builder.build(),
        truncated=int(np.count_nonzero(builder.row_truncated)),
        dropped_untrained=int(np.count_nonzero(builder.row_example < 0)),
    )


# --------------------------------------------------------------------------- packing


def pack_best_fit(sizes: Sequence[int] | np.ndarray, capacity: int) -> np.ndarray:
    """Row index of each item, placing the items in the order given, each into the open row
    with the least room that still fits it, or a new row when none does (best fit).

    Given sizes in decreasing order this is best-fit decreasing. Rows are numbered in the
    order they are opened. O(n) Python steps; the open rows are kept in buckets by room, with
    a bit set of the non-empty buckets, so each placement is a few big-integer operations.
    """
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]
    nonempty = 0  # bit r set <=> buckets[r] holds a row with exactly r slots free
    out: list[int] = []
    rows = 0
    for size in np.asarray(sizes, dtype=np.int64).tolist():
        if not 0 <= size <= capacity:
            raise ValueError(f"item of size {size} does not fit a row of {capacity}")
        fits = nonempty >> size
        if fits:
            room = size + (fits & -fits).bit_length() - 1
            bucket = buckets[room]
            row = bucket.pop()
            if not bucket:
                nonempty ^= 1 << room
        else:
            row, room = rows, capacity
            rows += 1
        out.append(row)
        left = room - size
        if left > 0:
            if not buckets[left]:
                nonempty |= 1 << left
            buckets[left].append(row)
    return np.asarray(out, dtype=np.int64)


class RowLayout:
    """Which examples go into which row, per epoch (see the module docstring)."""

    def __init__(self, lengths: np.ndarray, sequence_length: int, packing: bool) -> None:
        sizes = np.asarray(lengths, np.int64) - 1  # (input, target) pairs per example
        if sizes.size and (sizes.min() < 1 or sizes.max() > sequence_length):
            raise ValueError(
                f"examples must have 2 to {sequence_length + 1} tokens; "
                "apply the truncation rule first (ExampleBuilder / tokenize_conversations)"
            )
        self.sizes = sizes
        self.packing = packing
        n = sizes.size
        if not packing:
            self.rows = n
            return
        # Pack the lengths once, longest first (ties by index); every epoch reuses it.
        base = np.argsort(-sizes, kind="stable")
        row_of_pos = pack_best_fit(sizes[base], sequence_length)
        self.rows = int(row_of_pos.max()) + 1 if n else 0
        self._base = base
        self._pos_by_row = np.argsort(row_of_pos, kind="stable")
        counts = np.bincount(row_of_pos, minlength=self.rows)
        self._row_offsets = np.zeros(self.rows + 1, np.int64)
        np.cumsum(counts, out=self._row_offsets[1:])

    def fixed(self) -> tuple[np.ndarray, np.ndarray]:
        """(items, row offsets) in a fixed order: rows as packed, examples in input order."""
        if not self.packing:
            return np.arange(self.sizes.size, dtype=np.int64), np.arange(self.rows + 1)
        return self._base[self._pos_by_row], self._row_offsets

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(items, row offsets) of one epoch: the example indices row after row."""
        n = self.sizes.size
        if not self.packing:
            return rng.permutation(n).astype(np.int64), np.arange(self.rows + 1)
        perm = rng.permutation(n)
        order = perm[np.argsort(-self.sizes[perm], kind="stable")]  # same sizes as _base
        by_row = order[self._pos_by_row]
        row_perm = rng.permutation(self.rows)
        counts = np.diff(self._row_offsets)[row_perm]
        offsets = np.zeros(self.rows + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return by_row[_segment_index(self._row_offsets[row_perm], counts)], offsets


# --------------------------------------------------------------------------- rows


def build_rows(
    examples: ExampleSet,
    items: np.ndarray,
    item_offsets: np.ndarray,
    sequence_length: int,
    num_rows: int | None = None,
) -> Batch:
    """Rows holding ``items[item_offsets[r]:item_offsets[r + 1]]`` (example indices) each,
    then empty rows up to ``num_rows``. See the module docstring for the arrays."""
    s = sequence_length
    filled = item_offsets.size - 1
    nr = filled if num_rows is None else num_rows
    out = {
        "token_ids": np.zeros((nr, s), np.int32),
        "targets": np.zeros((nr, s), np.int32),
        "loss_mask": np.zeros((nr, s), np.float32),
        "segment_ids": np.zeros((nr, s), np.int32),
        "positions": np.zeros((nr, s), np.int32),
    }
    if items.size == 0:
        return out
    counts = np.diff(item_offsets)
    row_of_item = np.repeat(np.arange(filled, dtype=np.int64), counts)
    pairs = examples.lengths[items] - 1
    ends = np.cumsum(pairs)
    starts = ends - pairs
    first = np.zeros(filled, np.int64)  # first slot (in the flat pair order) of each row
    has = counts > 0
    first[has] = starts[item_offsets[:-1][has]]
    if int((ends - first[row_of_item]).max()) > s:
        raise ValueError(f"a row holds more than {s} (input, target) pairs")
    rank = np.arange(items.size, dtype=np.int64) - np.repeat(item_offsets[:-1], counts)
    t = np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(starts, pairs)  # pair in example
    dest = np.repeat(row_of_item * s + starts - first[row_of_item], pairs) + t
    src = np.repeat(examples.offsets[items], pairs) + t
    out["token_ids"].reshape(-1)[dest] = examples.ids[src]
    out["targets"].reshape(-1)[dest] = examples.ids[src + 1]
    out["loss_mask"].reshape(-1)[dest] = examples.mask[src + 1]
    out["segment_ids"].reshape(-1)[dest] = np.repeat(rank + 1, pairs)
    out["positions"].reshape(-1)[dest] = t
    return out


class BatchCounts(NamedTuple):
    tokens: int
    """Non-padding input positions."""
    trained: int
    """Positions whose target carries loss."""


def batch_counts(batch: Batch) -> BatchCounts:
    """Non-padding and trained tokens of a batch (for tokens/s and loss normalisation)."""
    return BatchCounts(
        int(np.count_nonzero(batch["segment_ids"])), int(np.count_nonzero(batch["loss_mask"]))
    )


# --------------------------------------------------------------------------- streams


class BatchStream:
    """Training batches forever: epoch after epoch, each in its own seeded order.

    ``next_batch()`` returns ``batch_size`` rows. With ``drop_last`` False a batch may take
    its last rows from the next epoch (every row of every epoch is used); with ``drop_last``
    True a batch never spans two epochs and the rows that do not fill one are skipped.
    :meth:`state` / :meth:`restore` resume exactly (see the module docstring).
    """

    def __init__(
        self,
        examples: Iterable[Example] | ExampleSet,
        *,
        batch_size: int,
        sequence_length: int,
        packing: bool,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or sequence_length < 1:
            raise ValueError("batch_size and sequence_length must be at least 1")
        self.examples = ExampleSet.of(examples)
        if len(self.examples) == 0:
            raise DatasetError(
                "no training examples to make batches from",
                hint="check the dataset: every row was invalid, a duplicate, or lost its "
                "trained tokens to truncation",
            )
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.packing = packing
        self.seed = seed
        self.drop_last = drop_last
        self.layout = RowLayout(self.examples.lengths, sequence_length, packing)
        if drop_last and self.layout.rows < batch_size:
            raise DatasetError(
                f"one epoch has {self.layout.rows} rows, fewer than batch_size {batch_size}, "
                "and drop_last skips incomplete batches",
                hint="lower train.batch_size or use more data",
            )
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None
        self._fingerprint: str | None = None

    @property
    def rows_per_epoch(self) -> int:
        return self.layout.rows

    def steps_per_epoch(self, rows_per_step: int) -> float:
        """Optimizer steps per epoch for ``rows_per_step`` rows (batch_size x accumulation)."""
        if self.drop_last:
            return float((self.rows_per_epoch // self.batch_size) * self.batch_size) / max(
                rows_per_step, 1
            )
        return self.rows_per_epoch / max(rows_per_step, 1)

    def total_steps(self, epochs: float, rows_per_step: int) -> int:
        """Optimizer steps for ``epochs`` passes (rounded up, at least 1)."""
        return max(1, math.ceil(epochs * self.steps_per_epoch(rows_per_step) - 1e-9))

    def _epoch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            items, offsets = self.layout.epoch(rng)
            self._cached = (self.epoch, items, offsets)
        return self._cached[1], self._cached[2]

    def next_batch(self) -> Batch:
        """The next ``batch_size`` rows (see the module docstring for the arrays)."""
        rows = self.rows_per_epoch
        if self.drop_last and rows - self.position < self.batch_size:
            self.epoch, self.position = self.epoch + 1, 0
        parts: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        need = self.batch_size
        while need:
            if self.position >= rows:
                self.epoch, self.position = self.epoch + 1, 0
            items, offsets = self._epoch_rows()
            take = min(need, rows - self.position)
            a, b = offsets[self.position], offsets[self.position + take]
            parts.append(items[a:b])
            counts.append(np.diff(offsets[self.position : self.position + take + 1]))
            self.position += take
            need -= take
        if self.position >= rows:
            self.epoch, self.position = self.epoch + 1, 0
        item_counts = np.concatenate(counts)
        item_offsets = np.zeros(item_counts.size + 1, np.int64)
        np.cumsum(item_counts, out=item_offsets[1:])
        return build_rows(self.examples, np.concatenate(parts), item_offsets, self.sequence_length)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def fingerprint(self) -> str:
        """Hash of the examples and the row settings; a state only restores onto the same."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            h.update(self.examples.fingerprint().encode())
            h.update(f"{self.sequence_length}/{self.packing}/{self.drop_last}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def state(self) -> dict[str, Any]:
        """Where the stream is, as a small JSON-able dict (for a checkpoint's state.json)."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "rows_per_epoch": self.rows_per_epoch,
            "fingerprint": self.fingerprint(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state` of a stream over the same examples and
        settings): the next batches are those the original stream would have given next.
        The state's seed wins over this stream's.

        Raises:
            TrainingError: the state is malformed, or the examples, ``sequence_length``,
                ``packing`` or ``drop_last`` differ from the stream that saved it.
        """
        try:
            epoch, position, seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
            fingerprint = str(state["fingerprint"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(
                f"the data position in the checkpoint is unreadable ({exc!r})",
                hint="start a new run, or resume from another checkpoint",
            ) from exc
        if fingerprint != self.fingerprint():
            raise TrainingError(
                "the training data differ from the checkpoint's (other rows, tokenization, "
                "sequence_length or packing), so the data order cannot be resumed",
                hint="resume with the same dataset and profile, or start a new run",
            )
        if epoch < 0 or not 0 <= position <= self.rows_per_epoch:
            raise TrainingError(f"the data position in the checkpoint is out of range: {state}")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._cached = None


def eval_batches(
    examples: Iterable[Example] | ExampleSet,
    batch_size: int,
    sequence_length: int,
    packing: bool,
) -> Iterator[Batch]:
    """Fixed, deterministic batches over every example once: rows in a fixed order (packed
    as :class:`BatchStream` packs, or one example per row in input order); the last batch is
    filled up with empty rows (loss_mask 0)."""
    data = ExampleSet.of(examples)
    layout = RowLayout(data.lengths, sequence_length, packing)
    items, offsets = layout.fixed()
    for start in range(0, layout.rows, batch_size):
        stop = min(start + batch_size, layout.rows)
        a, b = offsets[start], offsets[stop]
        yield build_rows(
            data, items[a:b], offsets[start : stop + 1] - a, sequence_length, batch_size
        )


__all__ = [
    "BATCH_KEYS",
    "Batch",
    "BatchCounts",
    "BatchStream",
    "Example",
    "ExampleBuilder",
    "ExampleSet",
    "RowLayout",
    "TokenizedSet",
    "batch_counts",
    "build_rows",
    "eval_batches",
    "load_examples",
    "pack_best_fit",
    "save_examples",
    "tokenize_conversations",
    "truncate_examples",
]
