"""Seeded train/eval split of a dataset's valid rows.

Contract (docs/data-api.md)::

    split_dataset(source, train_out, eval_out, *, spec, eval_fraction=0.1, seed=0,
                  on_event, should_stop) -> SplitResult

Additions: ``eval_count`` (an exact number of eval rows; wins over ``eval_fraction``),
``group_by`` ("none" or "id"), ``to`` (output format), and the in-memory
:func:`split_conversations`.

How rows are chosen: each valid row gets a 64-bit key, BLAKE2b of ``seed`` and the row's
normalised content (the same normalisation as dedup's exact rule), and the ``n_eval`` rows with
the smallest keys (ties broken by position) go to eval. So the split is

* deterministic for a seed: the same input and seed give byte-identical files;
* stable under re-runs and edits: a row's side depends on its content's key, not its
  position, so reordering the input never changes the split, and adding or removing rows
  only moves the few rows whose keys lie between the old and the new eval threshold;
* exactly sized: ``n_eval = eval_count`` or ``round(eval_fraction * valid rows)``.

``group_by="id"`` keys rows by ``Conversation.id`` instead (rows without an id by content), so
all rows sharing an id land on the same side; the eval size is then the smallest whole number
of groups reaching ``n_eval``.

Both outputs keep the input order of their rows. One validating pass over the source: rows
are serialised once into a temporary file beside ``train_out`` while their keys (8 bytes per
row) are collected; then the eval threshold is chosen and that file is read back line by line
into the two outputs (temporary names, renamed at the end; nothing is left on cancel).
Invalid rows are skipped and counted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.data.dedup import (
    OutputFormat,
    normalized_words,
    refuse_inputs,
    row_serializer,
)
from pipeline.data.types import Conversation, DatasetSpec
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

STAGE = "split"
GroupBy = Literal["none", "id"]

_PROGRESS_SECONDS = 0.1
_POLL_EVERY = 1000


def split_key(conv: Conversation, seed: int, group_by: GroupBy = "none") -> int:
    """The row's 64-bit sort key: rows with the smallest keys go to eval."""
    if group_by == "id" and conv.id is not None:
        data = "\x1did\x1d" + conv.id
    else:
        data = " ".join(normalized_words(conv))
    digest = hashlib.blake2b(
        data.encode("utf-8", "surrogatepass"),
        digest_size=8,
        key=seed.to_bytes(8, "little", signed=True),
    ).digest()
    return int.from_bytes(digest, "little")


def _eval_size(n: int, eval_fraction: float, eval_count: int | None) -> int:
    if eval_count is not None:
        if eval_count < 0:
            raise DatasetError(f"eval_count must be >= 0, got {eval_count}")
        return min(eval_count, n)
    if not 0.0 <= eval_fraction < 1.0:
        raise DatasetError(
            f"eval_fraction must be in [0, 1), got {eval_fraction}",
            hint="For example 0.1 keeps 10% of the rows for evaluation.",
        )
    return min(round(eval_fraction * n), n)


def eval_mask(keys: np.ndarray, n_eval: int, *, grouped: bool = False) -> np.ndarray:
    """Boolean mask of the rows that go to eval: the ``n_eval`` smallest keys (ties by
    position), or with ``grouped`` every row whose key is among the smallest groups."""
    n = keys.size
    mask = np.zeros(n, dtype=bool)
    if n_eval <= 0 or n == 0:
        return mask
    order = np.lexsort((np.arange(n), keys))  # by key, then by position
    if not grouped:
        mask[order[:n_eval]] = True
        return mask
    # Take whole groups (equal keys) until at least n_eval rows are in.
    cut = keys[order[min(n_eval, n) - 1]]
    mask[keys <= cut] = True
    return mask


def _check_args(eval_fraction: float, eval_count: int | None, group_by: str) -> None:
    _eval_size(1, eval_fraction, eval_count)  # validates the numbers
    if group_by not in ("none", "id"):
        raise DatasetError(f"Unknown group_by {group_by!r}", hint="Use 'none' or 'id'.")


def split_conversations(
    conversations: Sequence[Conversation],
    *,
    eval_fraction: float = 0.1,
    eval_count: int | None = None,
    seed: int = 0,
    group_by: GroupBy = "none",
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, eval) of an in-memory list, by the same rule as :func:`split_dataset`."""
    _check_args(eval_fraction, eval_count, group_by)
    keys = np.fromiter(
        (split_key(c, seed, group_by) for c in conversations),
        dtype=np.uint64,
        count=len(conversations),
    )
    n_eval = _eval_size(len(conversations), eval_fraction, eval_count)
    mask = eval_mask(keys, n_eval, grouped=group_by != "none")
    train = [c for c, m in zip(conversations, mask.tolist(), strict=True) if not m]
    evals = [c for c, m in zip(conversations, mask.tolist(), strict=True) if m]
    return train, evals


@dataclass(frozen=True, slots=True)
class SplitResult:
    train: Path
    eval: Path
    train_count: int
    eval_count: int
    invalid: int
    """Invalid rows skipped (in neither output)."""
    seed: int
    seconds: float

    @property
    def total(self) -> int:
        return self.train_count + self.eval_count


def split_dataset(
    source: Any,
    train_out: Path,
    eval_out: Path,
    *,
    spec: DatasetSpec | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    eval_count: int | None = None,
    group_by: GroupBy = "none",
    to: OutputFormat = "sharegpt",
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> SplitResult:
    """Split the valid rows of ``source`` into ``train_out`` and ``eval_out`` (JSONL); see the
    module docstring for the rule."""
    import orjson

    from pipeline.data.jsonio import AtomicJsonlWriter
    from pipeline.data.validate import CheckedStream

    start = time.perf_counter()
    train_out, eval_out = Path(train_out), Path(eval_out)
    _check_args(eval_fraction, eval_count, group_by)
    serialize = row_serializer(to)
    # CheckedStream resolves the sources, polls should_stop every 1,000 records and reports
    # progress in bytes under our stage name.
    stream = CheckedStream(
        source, spec or DatasetSpec(), on_event=on_event, should_stop=should_stop, stage=STAGE
    )
    refuse_inputs(stream.paths, (train_out, eval_out))
    keys = array("Q")
    invalid = 0
    train_out.parent.mkdir(parents=True, exist_ok=True)
    fd, staging_name = tempfile.mkstemp(
        prefix=f".{train_out.name}.", suffix=".rows.tmp", dir=train_out.parent
    )
    staging = Path(staging_name)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as rows:
            for checked in stream:
                conv = checked.conversation
                if conv is None:
                    invalid += 1
                    continue
                keys.append(split_key(conv, seed, group_by))
                rows.write(orjson.dumps(serialize(conv), option=orjson.OPT_APPEND_NEWLINE))
        n = len(keys)
        if eval_count is not None and eval_count > n:
            on_event(LogLine(f"Only {n:,} valid rows: all of them go to eval.", "warning"))
        n_eval = _eval_size(n, eval_fraction, eval_count)
        mask = eval_mask(np.frombuffer(keys, dtype=np.uint64), n_eval, grouped=group_by != "none")
        n_eval = int(np.count_nonzero(mask))
        last = time.perf_counter()
        with (
            AtomicJsonlWriter(train_out) as train_w,
            AtomicJsonlWriter(eval_out) as eval_w,
            staging.open("rb") as staged,
        ):
            for i, (line, to_eval) in enumerate(zip(staged, mask.tolist(), strict=True)):
                (eval_w if to_eval else train_w).write(orjson.loads(line))
                if i % _POLL_EVERY == 0:
                    if should_stop():
                        raise JobCancelled("Split stopped; no output was written.")
                    now = time.perf_counter()
                    if now - last >= _PROGRESS_SECONDS:
                        last = now
                        on_event(Progress(f"{STAGE} write", i, n, "rows"))
            train_w.commit()
            eval_w.commit()
    finally:
        staging.unlink(missing_ok=True)
    result = SplitResult(
        train=train_out,
        eval=eval_out,
        train_count=n - n_eval,
        eval_count=n_eval,
        invalid=invalid,
        seed=seed,
        seconds=time.perf_counter() - start,
    )
    on_event(
        StageDone(
            STAGE,
            f"train {result.train_count:,} rows, eval {result.eval_count:,} rows (seed {seed}); "
            f"{invalid:,} invalid rows skipped",
            result.seconds,
        )
    )
    return result
