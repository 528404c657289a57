"""Seeded train/eval split of a dataset's valid rows.

Contract (docs/data-api.md)::

    split_dataset(source, train_out, eval_out, *, spec, eval_fraction=0.1, seed=0,
                  on_event, should_stop) -> SplitResult

Additions: ``eval_count`` (an exact number of eval rows; wins over ``eval_fraction``),
``group_by`` ("none" or "id"), ``to`` (output format), and the in-memory
:func:`split_conversations`.

``to="hf"`` writes ONE saved Hugging Face ``DatasetDict`` folder at ``train_out`` with the
splits ``train`` and ``eval`` (ShareGPT rows, see :mod:`pipeline.data.hf_output`); ``eval_out``
is then left out (None). For JSONL output ``eval_out`` is required.

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
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.data.dedup import normalized_words
from pipeline.data.job_outputs import refuse_inputs, row_serializer
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
SplitFormat = Literal["sharegpt", "chatml", "hf"]
"""``hf``: one saved ``DatasetDict`` folder with the splits in :data:`HF_SPLITS`."""
HF_SPLITS = ("train", "eval")

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
    """For ``to="hf"`` the same folder as ``train`` (its ``eval`` split)."""
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
    eval_out: Path | None = None,
    *,
    spec: DatasetSpec | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    eval_count: int | None = None,
    group_by: GroupBy = "none",
    to: SplitFormat = "sharegpt",
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> SplitResult:
    """Split the valid rows of ``source`` into ``train_out`` and ``eval_out`` (JSONL), or with
    ``to="hf"`` into the ``train`` and ``eval`` splits of one saved ``DatasetDict`` folder at
    ``train_out`` (``eval_out`` None); see the module docstring for the rule.

    Raises:
        DatasetError: bad arguments, an output that is an input (or for ``hf`` a folder that
            holds one, or an existing folder that is not a saved dataset), ``eval_out``
            missing for JSONL or given for ``hf``.
        JobCancelled: ``should_stop`` returned True; nothing was written.
    """
    import orjson

    from pipeline.data.hf_output import check_hf_target, refuse_replacing_inputs
    from pipeline.data.validate import CheckedStream

    start = time.perf_counter()
    train_out = Path(train_out)
    _check_args(eval_fraction, eval_count, group_by)
    if to == "hf":
        if eval_out is not None and Path(eval_out) != train_out:
            raise DatasetError(
                "with to='hf' the train and eval splits go into one DatasetDict folder "
                f"({train_out}); there is no separate eval output",
                hint="leave eval_out out (None)",
            )
        eval_out = train_out
        serialize = row_serializer("sharegpt")
    else:
        if eval_out is None:
            raise DatasetError(
                "split needs an eval output file", hint="give eval_out (e.g. eval.jsonl)"
            )
        eval_out = Path(eval_out)
        serialize = row_serializer(to)
    # CheckedStream resolves the sources, polls should_stop every 1,000 records and reports
    # progress in bytes under our stage name.
    stream = CheckedStream(
        source, spec or DatasetSpec(), on_event=on_event, should_stop=should_stop, stage=STAGE
    )
    if to == "hf":
        refuse_inputs(stream.paths, (train_out,))
        refuse_replacing_inputs(stream.paths, train_out)
        check_hf_target(train_out)
    else:
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
        with ExitStack() as stack:
            put, commits = _writers(stack, to, train_out, eval_out)
            staged = stack.enter_context(staging.open("rb"))
            for i, (line, to_eval) in enumerate(zip(staged, mask.tolist(), strict=True)):
                put(orjson.loads(line), to_eval)
                if i % _POLL_EVERY == 0:
                    if should_stop():
                        raise JobCancelled("Split stopped; no output was written.")
                    now = time.perf_counter()
                    if now - last >= _PROGRESS_SECONDS:
                        last = now
                        on_event(Progress(f"{STAGE} write", i, n, "rows"))
            for commit in commits:
                commit()
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


def _writers(
    stack: ExitStack, to: SplitFormat, train_out: Path, eval_out: Path
) -> tuple[Callable[[dict[str, Any], bool], None], list[Callable[[], None]]]:
    """The outputs of a split, entered on ``stack``: a function that writes one row to train
    or eval, and the commits to call at the end."""
    if to == "hf":
        from pipeline.data.hf_output import HfDatasetWriter

        hf = stack.enter_context(HfDatasetWriter(train_out, splits=HF_SPLITS))

        def put_hf(row: dict[str, Any], to_eval: bool) -> None:
            hf.write(row, HF_SPLITS[1] if to_eval else HF_SPLITS[0])

        return put_hf, [hf.commit]

    from pipeline.data.jsonio import AtomicJsonlWriter

    train_w = stack.enter_context(AtomicJsonlWriter(train_out))
    eval_w = stack.enter_context(AtomicJsonlWriter(eval_out))

    def put(row: dict[str, Any], to_eval: bool) -> None:
        (eval_w if to_eval else train_w).write(row)

    return put, [train_w.commit, eval_w.commit]
