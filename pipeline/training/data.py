"""A profile's dataset -> tokenized train and eval examples, with the counts of every step.

Contract::

    prepare_data(data_cfg, train_cfg, tokenizer, *, train_path=None, rejects_dir=None,
                 workspace=None, on_event, should_stop) -> PreparedData

One streaming pass over the training file(s) through the data stage
(:class:`~pipeline.data.checked_stream.CheckedStream`: parse, convert, pandera checks):

1. invalid rows are skipped; when ``rejects_dir`` is given (the run's folder) they go to
   ``rejects_dir/rejects.jsonl`` as :func:`~pipeline.data.convert_job.reject_row` lines (the
   rejects file of ``convert``, written atomically, only when some row was rejected). The
   count per issue code and the first few issues are in the result and in log events;
2. duplicates are removed per ``data.dedup`` with the data stage's
   :class:`~pipeline.data.dedup.Deduplicator` (first occurrence kept; "near" also removes
   MinHash near duplicates at ``data.near_threshold``);
3. each kept conversation is formatted with the Gemma 3 template (``train.train_on_prompt``),
   tokenized with its loss mask in batches, and truncated by the rule of
   :mod:`pipeline.training.batches` (first ``sequence_length + 1`` tokens; examples with no
   trained target left are dropped);
4. eval: with ``data.eval_fraction`` the kept rows are split by the rule of
   :mod:`pipeline.data.split` (``split_key`` seeded with ``train.seed``, the
   ``round(fraction * rows)`` smallest keys go to eval), so the split equals ``gemma-tui data
   split --seed <train.seed>`` run on the deduplicated rows; with ``data.eval_path`` that file
   is read, checked and tokenized the same way (invalid rows rejected, not deduplicated).

Memory: the kept examples (5 bytes per token) plus 8 bytes per row for the split keys, and
the dedup index (see :mod:`pipeline.data.dedup`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.data import display_path
from pipeline.data.split import eval_mask, split_key
from pipeline.data.types import Conversation, DatasetSpec, Issue
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import (
    EventSink,
    LogLine,
    Progress,
    StageDone,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.training.batches import TOKENIZE_BATCH, ExampleBuilder, ExampleSet

if TYPE_CHECKING:
    from pipeline.data.checked_stream import CheckedRecord
    from pipeline.data.jsonio import AtomicJsonlWriter
    from pipeline.models.tokenizer import GemmaTokenizer
    from pipeline.profiles.schema import DataConfig, TrainConfig
    from pipeline.workspace import Workspace

STAGE = "data"
REJECTS_NAME = "rejects.jsonl"
FIRST_ISSUES = 5
"""Issues kept (and logged) per source, as examples of what is wrong."""
_PROGRESS_SECONDS = 0.1

EvalFrom = Literal["none", "fraction", "path"]


@dataclass(frozen=True, slots=True)
class SetCounts:
    """What happened to the rows of one side (train or eval) after validation and dedup."""

    rows: int
    """Valid (and, for train, deduplicated) rows on this side."""
    examples: int
    """Examples kept: ``rows - dropped_untrained``."""
    truncated: int
    """Rows longer than ``sequence_length + 1`` tokens (cut; dropped ones included)."""
    dropped_untrained: int
    """Rows dropped because no trained target was left after truncation."""
    tokens: int
    """Tokens of the kept examples, after truncation."""
    trained_tokens: int
    """Trained targets of the kept examples, after truncation."""

    def to_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "examples": self.examples,
            "truncated": self.truncated,
            "dropped_untrained": self.dropped_untrained,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


@dataclass(frozen=True, slots=True)
class SourceCounts:
    """Reading one source (train or eval): rows read and rejected, and why."""

    sources: tuple[str, ...]
    rows_read: int
    """Records read, valid or not."""
    rejected: int
    counts_by_code: dict[str, int]
    """Issues per code over the rejected rows and whole-file problems."""
    first_issues: tuple[Issue, ...]
    """The first few issues, in reading order."""

    @property
    def valid(self) -> int:
        return self.rows_read - self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "rows_read": self.rows_read,
            "rejected": self.rejected,
            "counts_by_code": dict(self.counts_by_code),
            "first_issues": [i.to_dict() for i in self.first_issues],
        }


@dataclass(frozen=True)
class PreparedData:
    """Tokenized train and eval examples, and the counts of every step that made them."""

    train: ExampleSet
    eval: ExampleSet
    """Empty when there is no eval data."""
    train_counts: SetCounts
    eval_counts: SetCounts
    read: SourceCounts
    """The training source(s)."""
    eval_read: SourceCounts | None
    """The eval source with ``eval_path``; None otherwise."""
    eval_from: EvalFrom
    duplicates_exact: int
    duplicates_near: int
    rejects: Path | None
    """The rejects file, when one was asked for and some row was rejected."""
    sequence_length: int
    train_on_prompt: bool
    seconds: float
    notes: tuple[str, ...] = field(default=())
    """Warnings worth showing (e.g. an eval fraction too small for any row)."""

    @property
    def rows_read(self) -> int:
        return self.read.rows_read

    @property
    def rejected(self) -> int:
        return self.read.rejected + (self.eval_read.rejected if self.eval_read else 0)

    @property
    def duplicates_removed(self) -> int:
        return self.duplicates_exact + self.duplicates_near

    def summary(self) -> str:
        t, e = self.train_counts, self.eval_counts
        text = (
            f"{self.rows_read:,} rows read, {self.read.rejected:,} rejected, "
            f"{self.duplicates_removed:,} duplicates removed; train {t.examples:,} examples, "
            f"{t.tokens:,} tokens ({t.trained_tokens:,} trained), {t.truncated:,} truncated, "
            f"{t.dropped_untrained:,} dropped"
        )
        if self.eval_from != "none":
            text += f"; eval {e.examples:,} examples, {e.tokens:,} tokens"
            if self.eval_read is not None and self.eval_read.rejected:
                text += f" ({self.eval_read.rejected:,} rows rejected)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (e.g. the ``data`` entry of run.json)."""
        return {
            "read": self.read.to_dict(),
            "eval_read": self.eval_read.to_dict() if self.eval_read else None,
            "eval_from": self.eval_from,
            "duplicates_exact": self.duplicates_exact,
            "duplicates_near": self.duplicates_near,
            "rejects": str(self.rejects) if self.rejects else None,
            "sequence_length": self.sequence_length,
            "train_on_prompt": self.train_on_prompt,
            "train": self.train_counts.to_dict(),
            "eval": self.eval_counts.to_dict(),
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


class _Rejects:
    """The rejects file, opened on the first rejected row (so none appears when all is well)."""

    def __init__(self, path: Path | None, stack: ExitStack) -> None:
        self.path = path
        self._stack = stack
        self._writer: AtomicJsonlWriter | None = None

    def write(self, checked: CheckedRecord) -> None:
        if self.path is None:
            return
        from pipeline.data.convert_job import reject_row

        if self._writer is None:
            from pipeline.data.jsonio import AtomicJsonlWriter

            self._writer = self._stack.enter_context(AtomicJsonlWriter(self.path))
        self._writer.write(reject_row(checked))

    def commit(self) -> Path | None:
        if self._writer is None:
            return None
        self._writer.commit()
        return self.path


class _Reader:
    """Streams the valid conversations of one source, tallying the rejected rows."""

    def __init__(
        self,
        source: str | Path,
        spec: DatasetSpec,
        rejects: _Rejects,
        *,
        what: str,
        on_event: EventSink,
        should_stop: StopCheck,
    ) -> None:
        from pipeline.data.checked_stream import CheckedStream

        self.what = what
        self.on_event = on_event
        self.rejects = rejects
        self.rows = 0
        self.rejected = 0
        self.counts: Counter[str] = Counter()
        self.first: list[Issue] = []
        try:
            self.stream = CheckedStream(
                source,
                spec,
                on_event=on_event,
                should_stop=should_stop,
                on_file_issue=self._file_issue,
                stage=f"read {what}",
            )
        except DatasetError as exc:
            raise DatasetError(f"{what} data: {exc.message}", hint=exc.hint) from exc

    def _note(self, issue: Issue) -> None:
        self.counts[issue.code] += 1
        if len(self.first) < FIRST_ISSUES:
            self.first.append(issue)
            self.on_event(LogLine(f"{self.what}: {issue}", "warning"))

    def _file_issue(self, issue: Issue) -> None:
        if issue.severity == "error":
            self._note(issue)

    def __iter__(self) -> Iterator[Conversation]:
        for checked in self.stream:
            self.rows += 1
            conv = checked.conversation
            if conv is None:
                self.rejected += 1
                for issue in checked.issues:
                    self._note(issue)
                self.rejects.write(checked)
                continue
            yield conv

    def counts_result(self) -> SourceCounts:
        return SourceCounts(
            sources=tuple(r.display for r in self.stream.readers),
            rows_read=self.rows,
            rejected=self.rejected,
            counts_by_code=dict(self.counts.most_common()),
            first_issues=tuple(self.first),
        )

    def no_rows_error(self, rejects: Path | None) -> DatasetError:
        """The error for a source with no valid row."""
        where = ", ".join(display_path(p) for p in self.stream.paths)
        if self.rows == 0:
            why = f": {self.first[0]}" if self.first else ""
            return DatasetError(
                f"{self.what} data {where} has no rows{why}",
                hint="point the profile's data path at a file with conversations in it",
            )
        codes = ", ".join(f"{c} ({n:,})" for c, n in self.counts.most_common(4))
        first = f"; first: {self.first[0]}" if self.first else ""
        see = (
            f"every rejected row and its reasons are in {rejects}"
            if rejects is not None
            else f"run `gemma-tui data validate {where}` to list every problem"
        )
        return DatasetError(
            f"none of the {self.rows:,} rows of the {self.what} data {where} is valid: "
            f"{codes}{first}",
            hint=f"{see}; fix the rows, or set data.format, data.columns and data.roles if the "
            "file uses other names",
        )


class _Tokenizing:
    """Formats, tokenizes and truncates conversations in batches, with progress events."""

    def __init__(
        self,
        tokenizer: GemmaTokenizer,
        train_cfg: TrainConfig,
        label: str,
        on_event: EventSink,
        should_stop: StopCheck,
    ) -> None:
        self.tokenizer = tokenizer
        self.train_on_prompt = train_cfg.train_on_prompt
        self.builder = ExampleBuilder(train_cfg.sequence_length)
        self.label = label
        self.on_event = on_event
        self.should_stop = should_stop
        self.batch: list[Conversation] = []
        self.done = 0
        self._last = 0.0

    def add(self, conv: Conversation) -> None:
        self.batch.append(conv)
        if len(self.batch) >= TOKENIZE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        from pipeline.data.formatter import format_conversation

        if self.should_stop():
            raise JobCancelled("Preparing the training data was stopped.")
        top = self.train_on_prompt
        formatted = [format_conversation(c, train_on_prompt=top) for c in self.batch]
        self.builder.add(self.tokenizer.encode_batch_with_mask(formatted))
        self.done += len(self.batch)
        self.batch.clear()
        now = time.perf_counter()
        if now - self._last >= _PROGRESS_SECONDS:
            self._last = now
            self.on_event(Progress(self.label, self.done, None, "rows"))

    def side(self, rows: np.ndarray, examples: ExampleSet) -> tuple[ExampleSet, SetCounts]:
        """The examples of the given rows (in row order) and their counts."""
        row_example = self.builder.row_example[rows]
        kept = row_example[row_example >= 0]
        every = kept.size == len(examples) and np.array_equal(kept, np.arange(kept.size))
        chosen = examples if every else examples.take(kept)  # no copy when nothing is left out
        counts = SetCounts(
            rows=int(rows.size),
            examples=len(chosen),
            truncated=int(np.count_nonzero(self.builder.row_truncated[rows])),
            dropped_untrained=int(np.count_nonzero(row_example < 0)),
            tokens=chosen.tokens,
            trained_tokens=chosen.trained_tokens,
        )
        return chosen, counts


def _make_deduplicator(data_cfg: DataConfig) -> Any:
    if data_cfg.dedup == "none":
        return None
    from pipeline.data.dedup import Deduplicator

    near = data_cfg.near_threshold if data_cfg.dedup == "near" else None
    return Deduplicator(near_threshold=near)


def _read_train(
    reader: _Reader,
    tok: _Tokenizing,
    dedup: Any,
    data_cfg: DataConfig,
    seed: int,
    notes: list[str],
    rejects: Path | None,
) -> tuple[ExampleSet, SetCounts, ExampleSet, SetCounts]:
    """Deduplicate and tokenize the training rows, then split eval off by ``eval_fraction``."""
    fraction = data_cfg.eval_fraction
    keys: list[int] = []
    for conv in reader:
        if dedup is not None and dedup.check(conv) is not None:
            continue
        if fraction is not None:
            keys.append(split_key(conv, seed))
        tok.add(conv)
    tok.flush()
    if reader.rows == reader.rejected:
        raise reader.no_rows_error(rejects)
    n = tok.builder.rows
    in_eval = np.zeros(n, bool)
    if fraction is not None:
        in_eval = eval_mask(np.asarray(keys, np.uint64), min(round(fraction * n), n))
        if not in_eval.any():
            notes.append(f"eval_fraction {fraction} of {n:,} rows is no row: no eval data")
    examples = tok.builder.build()
    train, train_counts = tok.side(np.flatnonzero(~in_eval), examples)
    evals, eval_counts = tok.side(np.flatnonzero(in_eval), examples)
    return train, train_counts, evals, eval_counts


def _read_eval(
    reader: _Reader, tok: _Tokenizing, notes: list[str], rejects: Path | None
) -> tuple[ExampleSet, SetCounts]:
    """Tokenize the rows of ``eval_path`` (checked, not deduplicated)."""
    for conv in reader:
        tok.add(conv)
    tok.flush()
    if reader.rows == reader.rejected:
        raise reader.no_rows_error(rejects)
    evals, counts = tok.side(np.arange(tok.builder.rows), tok.builder.build())
    if len(evals) == 0:
        notes.append("no eval example is left after truncation: no eval data")
    return evals, counts


def prepare_data(
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    tokenizer: GemmaTokenizer | None,
    *,
    train_path: str | Path | None = None,
    rejects_dir: str | Path | None = None,
    workspace: Workspace | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> PreparedData:
    """Read, check, deduplicate, split, format, tokenize and truncate the profile's data.

    ``train_path`` overrides ``data_cfg.train_path``. ``rejects_dir``: the folder (the run's)
    where the rejected rows of train and eval go, as :data:`REJECTS_NAME`; None writes none.
    ``tokenizer`` None loads the default one (cached in ``workspace``). The steps: see the
    module docstring.

    Raises:
        DatasetError: no train path, a path that does not exist (the message says train or
            eval), no valid row in the train or eval data, or no example left to train on.
        JobCancelled: ``should_stop`` returned True (no rejects file is left behind).
    """
    started = time.perf_counter()
    source = train_path if train_path is not None else data_cfg.train_path
    if source is None or not str(source).strip():
        raise DatasetError(
            "no training data: data.train_path is not set",
            hint="set data.train_path in the profile, or give the dataset when starting the run",
        )
    if tokenizer is None:
        from pipeline.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(workspace, on_event=on_event)
    spec = data_cfg.dataset_spec()
    seq = train_cfg.sequence_length
    notes: list[str] = []
    rejects = Path(rejects_dir) / REJECTS_NAME if rejects_dir is not None else None
    with ExitStack() as stack:
        rej = _Rejects(rejects, stack)
        try:
            reader = _Reader(
                source, spec, rej, what="train", on_event=on_event, should_stop=should_stop
            )
            eval_reader = None
            if data_cfg.eval_path is not None:
                eval_reader = _Reader(
                    data_cfg.eval_path,
                    spec,
                    rej,
                    what="eval",
                    on_event=on_event,
                    should_stop=should_stop,
                )
            tok = _Tokenizing(tokenizer, train_cfg, "tokenize", on_event, should_stop)
            dedup = _make_deduplicator(data_cfg)
            sides = _read_train(reader, tok, dedup, data_cfg, train_cfg.seed, notes, rejects)
            train, train_counts, evals, eval_counts = sides
            if eval_reader is not None:
                etok = _Tokenizing(tokenizer, train_cfg, "tokenize eval", on_event, should_stop)
                evals, eval_counts = _read_eval(eval_reader, etok, notes, rejects)
            if len(train) == 0:
                raise DatasetError(
                    f"no training example is left: all {train_counts.rows:,} rows lost every "
                    f"trained token to truncation at sequence_length {seq} (the model turns "
                    "start later)",
                    hint="raise train.sequence_length, or set train.train_on_prompt = true",
                )
        except DatasetError:
            rej.commit()  # keep the rejected rows read so far: the error points at them
            raise
        written = rej.commit()
    read = reader.counts_result()
    eval_from: EvalFrom = "none"
    if eval_reader is not None:
        eval_from = "path"
    elif data_cfg.eval_fraction is not None:
        eval_from = "fraction"
    for note in notes:
        on_event(LogLine(note, "warning"))
    result = PreparedData(
        train=train,
        eval=evals,
        train_counts=train_counts,
        eval_counts=eval_counts,
        read=read,
        eval_read=eval_reader.counts_result() if eval_reader is not None else None,
        eval_from=eval_from,
        duplicates_exact=dedup.exact_removed if dedup is not None else 0,
        duplicates_near=dedup.near_removed if dedup is not None else 0,
        rejects=written,
        sequence_length=seq,
        train_on_prompt=train_cfg.train_on_prompt,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )
    on_event(StageDone(STAGE, result.summary(), result.seconds))
    return result


__all__ = ["REJECTS_NAME", "EvalFrom", "PreparedData", "SetCounts", "SourceCounts", "prepare_data"]
