"""Token statistics of a dataset as the trainer will see it: lengths, truncation, trained share.

Contract (docs/data-api.md)::

    compute_stats(source, *, spec, tokenizer, max_seq_len=1024, train_on_prompt=False,
                  on_event, should_stop) -> DatasetStats

Addition: :func:`conversation_stats` does the same over an iterable of
:class:`~pipeline.data.types.Conversation` (no file, nothing skipped), and ``batch_size``.

Every valid conversation is formatted with the Gemma 3 template
(:func:`pipeline.data.formatter.format_conversation`) and tokenized in batches with
:meth:`GemmaTokenizer.encode_batch_with_mask` (SentencePiece's threaded batch encoder), so
the lengths include ``<bos>``, the turn markers and the template's newlines, exactly what a
training example holds. Invalid rows (as ``iter_checked`` reports them) are counted and
skipped.

Truncation rule (the trainer's, :mod:`pipeline.training.batches`): ``max_seq_len`` is the
trainer's ``train.sequence_length`` S. A row predicts tokens ``1..S`` from tokens ``0..S-1``,
so an example keeps its first ``S + 1`` tokens; one of more than ``S + 1`` tokens is
truncated. ``truncated`` counts such examples, ``truncated_tokens`` the tokens dropped, and
the trained share is given before (``trained_tokens / total_tokens``) and after truncation
(``kept_trained_tokens / kept_tokens``). ``lost_all_trained`` counts examples whose every
trained token falls past the first ``S + 1`` tokens: they would teach nothing, and the
trainer drops them. At ``max_seq_len`` S the statistics count exactly what the trainer at
``sequence_length`` S truncates (``truncated``), drops for lack of a trained target
(``lost_all_trained``, every example having one before truncation) and trains on
(``kept_trained_tokens``).

Memory: one int32 per example (the lengths, for the histogram) plus one batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.formatter import format_conversation
from pipeline.data.types import Conversation, DatasetSpec
from pipeline.errors import JobCancelled
from pipeline.events import EventSink, Progress, StageDone, StopCheck, ignore_event, never_stop

if TYPE_CHECKING:
    from pipeline.models.tokenizer import GemmaTokenizer

STAGE = "stats"
DEFAULT_BATCH = 1000
"""Rows per tokenizer call: large enough for SentencePiece's threads, small enough to poll
``should_stop`` often (the contract asks for at least every 1,000 rows)."""
_PROGRESS_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class LengthSummary:
    """Summary of token lengths per example (0 everywhere when there are no examples)."""

    count: int
    min: int
    mean: float
    median: float
    p90: float
    p99: float
    max: int

    @classmethod
    def of(cls, lengths: np.ndarray) -> LengthSummary:
        if lengths.size == 0:
            return cls(0, 0, 0.0, 0.0, 0.0, 0.0, 0)
        p50, p90, p99 = np.percentile(lengths, (50, 90, 99))
        return cls(
            count=int(lengths.size),
            min=int(lengths.min()),
            mean=float(lengths.mean()),
            median=float(p50),
            p90=float(p90),
            p99=float(p99),
            max=int(lengths.max()),
        )


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """Token statistics of the valid conversations of a dataset."""

    sources: tuple[str, ...]
    max_seq_len: int
    """The trainer's sequence_length: each example keeps its first ``max_seq_len + 1``
    tokens."""
    train_on_prompt: bool
    examples: int
    """Valid conversations measured."""
    invalid: int
    """Rows skipped because they are invalid (0 for :func:`conversation_stats`)."""
    lengths: np.ndarray
    """Token length of each example, in input order (int32): the histogram's data."""
    summary: LengthSummary
    total_tokens: int
    trained_tokens: int
    """Tokens inside the loss mask, before truncation."""
    truncated: int
    """Examples of more than ``max_seq_len + 1`` tokens (cut by truncation)."""
    truncated_tokens: int
    """Tokens dropped by truncation."""
    kept_trained_tokens: int
    """Trained tokens within the first ``max_seq_len + 1`` tokens of each example."""
    lost_all_trained: int
    """Examples with trained tokens of which none survive truncation."""
    seconds: float
    """Wall time of the whole job (reading, validating, formatting, tokenizing)."""
    tokenize_seconds: float
    """Time spent formatting and tokenizing only."""

    @property
    def kept_tokens(self) -> int:
        return self.total_tokens - self.truncated_tokens

    @property
    def trained_share(self) -> float:
        """Trained / total tokens before truncation."""
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def trained_share_after_truncation(self) -> float:
        kept = self.kept_tokens
        return self.kept_trained_tokens / kept if kept else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Formatting + tokenizing throughput."""
        return self.total_tokens / self.tokenize_seconds if self.tokenize_seconds > 0 else 0.0

    def histogram(self, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """(counts, bin edges) of the lengths, as ``numpy.histogram`` gives them."""
        if self.lengths.size == 0:
            return np.zeros(bins, dtype=np.int64), np.linspace(0, 1, bins + 1)
        return np.histogram(self.lengths, bins=bins)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-example lengths)."""
        return {
            "sources": list(self.sources),
            "max_seq_len": self.max_seq_len,
            "train_on_prompt": self.train_on_prompt,
            "examples": self.examples,
            "invalid": self.invalid,
            "lengths": asdict(self.summary),
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "trained_share": self.trained_share,
            "truncated": self.truncated,
            "truncated_tokens": self.truncated_tokens,
            "kept_tokens": self.kept_tokens,
            "kept_trained_tokens": self.kept_trained_tokens,
            "trained_share_after_truncation": self.trained_share_after_truncation,
            "lost_all_trained": self.lost_all_trained,
            "seconds": self.seconds,
            "tokenize_seconds": self.tokenize_seconds,
            "tokens_per_second": self.tokens_per_second,
        }


class _Accumulator:
    """Running totals over batches of conversations."""

    def __init__(self, tokenizer: GemmaTokenizer, max_seq_len: int, train_on_prompt: bool) -> None:
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be at least 1, got {max_seq_len}")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_prompt = train_on_prompt
        self.lengths: list[np.ndarray] = []
        self.examples = 0
        self.total = 0
        self.trained = 0
        self.truncated = 0
        self.truncated_tokens = 0
        self.kept_trained = 0
        self.lost_all = 0
        self.seconds = 0.0

    def add(self, batch: list[Conversation]) -> None:
        start = time.perf_counter()
        top = self.train_on_prompt
        formatted = [format_conversation(c, train_on_prompt=top) for c in batch]
        encoded = self.tokenizer.encode_batch_with_mask(formatted)
        limit = self.max_seq_len + 1  # the trainer keeps sequence_length + 1 tokens
        lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int32, count=len(encoded))
        for (_, mask), n in zip(encoded, lengths.tolist(), strict=True):
            trained = int(np.count_nonzero(mask))
            self.trained += trained
            if n > limit:
                kept = int(np.count_nonzero(mask[:limit]))
                self.truncated += 1
                self.truncated_tokens += n - limit
                self.kept_trained += kept
                if trained and not kept:
                    self.lost_all += 1
            else:
                self.kept_trained += trained
        self.lengths.append(lengths)
        self.examples += len(batch)
        self.total += int(lengths.sum(dtype=np.int64))
        self.seconds += time.perf_counter() - start

    def result(self, sources: tuple[str, ...], invalid: int, seconds: float) -> DatasetStats:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int32)
        return DatasetStats(
            sources=sources,
            max_seq_len=self.max_seq_len,
            train_on_prompt=self.train_on_prompt,
            examples=self.examples,
            invalid=invalid,
            lengths=lengths,
            summary=LengthSummary.of(lengths),
            total_tokens=self.total,
            trained_tokens=self.trained,
            truncated=self.truncated,
            truncated_tokens=self.truncated_tokens,
            kept_trained_tokens=self.kept_trained,
            lost_all_trained=self.lost_all,
            seconds=seconds,
            tokenize_seconds=self.seconds,
        )


class _InvalidCounter:
    """Invalid rows seen by the reading generator (read when the stream is exhausted)."""

    invalid = 0


def _batches(items: Iterable[Conversation], size: int) -> Iterator[list[Conversation]]:
    batch: list[Conversation] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run(
    conversations: Iterable[Conversation],
    counter: _InvalidCounter,
    sources: tuple[str, ...],
    *,
    tokenizer: GemmaTokenizer | None,
    max_seq_len: int,
    train_on_prompt: bool,
    batch_size: int,
    on_event: EventSink,
    should_stop: StopCheck,
    row_progress: bool,
) -> DatasetStats:
    """The job; ``row_progress`` False when the reader already reports progress (in bytes)."""
    start = time.perf_counter()
    if tokenizer is None:
        from pipeline.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(on_event=on_event)
    acc = _Accumulator(tokenizer, max_seq_len, train_on_prompt)
    last = 0.0
    for batch in _batches(conversations, max(1, min(batch_size, DEFAULT_BATCH))):
        if should_stop():
            raise JobCancelled("Token statistics stopped before the end of the dataset.")
        acc.add(batch)
        now = time.perf_counter()
        if row_progress and now - last >= _PROGRESS_SECONDS:
            last = now
            on_event(Progress(STAGE, acc.examples, None, "rows"))
    elapsed = time.perf_counter() - start
    stats = acc.result(sources, counter.invalid, elapsed)
    if row_progress:
        on_event(Progress(STAGE, acc.examples, acc.examples, "rows"))
    s = stats.summary
    on_event(
        StageDone(
            STAGE,
            f"{stats.examples:,} examples, {stats.total_tokens:,} tokens (median {s.median:.0f}, "
            f"p99 {s.p99:.0f}, max {s.max}); {stats.truncated:,} truncated at max_seq_len "
            f"{max_seq_len}; "
            f"trained {stats.trained_share:.1%}; {stats.invalid:,} invalid skipped; "
            f"{stats.tokens_per_second:,.0f} tokens/s",
            elapsed,
        )
    )
    return stats


def conversation_stats(
    conversations: Iterable[Conversation],
    *,
    tokenizer: GemmaTokenizer | None = None,
    max_seq_len: int = 1024,
    train_on_prompt: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> DatasetStats:
    """Token statistics of ``conversations`` (all taken as valid). ``tokenizer`` None loads
    the default (embedded 270M) tokenizer."""
    return _run(
        conversations,
        _InvalidCounter(),
        (),
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        train_on_prompt=train_on_prompt,
        batch_size=batch_size,
        on_event=on_event,
        should_stop=should_stop,
        row_progress=True,
    )


def compute_stats(
    source: Any,
    *,
    spec: DatasetSpec | None = None,
    tokenizer: GemmaTokenizer | None = None,
    max_seq_len: int = 1024,
    train_on_prompt: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> DatasetStats:
    """Token statistics of the valid rows of ``source`` (a file, folder, glob or list of them,
    as :func:`pipeline.data.loader.resolve_sources` takes); invalid rows are counted, skipped."""
    from pipeline.data.validate import CheckedStream

    # CheckedStream resolves the sources, polls should_stop every 1,000 records and reports
    # reading progress in bytes under our stage name.
    stream = CheckedStream(
        source, spec or DatasetSpec(), on_event=on_event, should_stop=should_stop, stage=STAGE
    )
    counter = _InvalidCounter()

    def valid() -> Iterator[Conversation]:
        for checked in stream:
            if checked.conversation is None:
                counter.invalid += 1
            else:
                yield checked.conversation

    return _run(
        valid(),
        counter,
        tuple(reader.display for reader in stream.readers),
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        train_on_prompt=train_on_prompt,
        batch_size=batch_size,
        on_event=on_event,
        should_stop=should_stop,
        row_progress=False,
    )
