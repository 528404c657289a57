"""The convert job: the valid rows of a dataset as ShareGPT or ChatML JSONL (or a saved
Hugging Face dataset folder), the rest to a rejects file (each row with where it came from and
its issues).

Contract (docs/data-api.md): :func:`convert_dataset` streams the dataset through
:class:`~pipeline.data.checked_stream.CheckedStream` and writes both files atomically
(:class:`~pipeline.data.jsonio.AtomicJsonlWriter`, or
:class:`~pipeline.data.hf_output.HfDatasetWriter` for ``to="hf"``); :func:`reject_row` is the
shape of one line of a rejects file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.data.checked_stream import CheckedRecord, CheckedStream, Source
from pipeline.data.formats.output import conversation_to_chatml, conversation_to_sharegpt
from pipeline.data.hf_output import HfDatasetWriter, refuse_replacing_inputs
from pipeline.data.job_outputs import output_clash, ref_dict
from pipeline.data.jsonio import AtomicJsonlWriter
from pipeline.data.loader import resolve_sources
from pipeline.data.types import DatasetSpec, Issue
from pipeline.errors import DatasetError
from pipeline.events import EventSink, StageDone, StopCheck, ignore_event, never_stop

ConvertFormat = Literal["sharegpt", "chatml", "hf"]
"""``hf``: ShareGPT rows as a saved Hugging Face ``Dataset`` folder (``load_from_disk``)."""


@dataclass(frozen=True, slots=True)
class ConvertResult:
    output: Path
    rejects: Path
    valid: int
    rejected: int
    counts_by_code: dict[str, int]
    file_issues: tuple[Issue, ...] = ()
    """Whole-file issues (a BOM, an empty file, ...): they are in no row of ``rejects``."""


def _refuse_overwrite(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    clash = output_clash(inputs, outputs)
    if clash is None:
        return
    out, kind = clash
    if kind == "input":
        raise DatasetError(
            f"{out} is one of the input files; converting would overwrite it",
            hint="write the output to another file name or folder",
        )
    raise DatasetError(
        f"the output and the rejects file are the same file ({outputs[0]})",
        hint="give the rejects file another name",
    )


def reject_row(checked: CheckedRecord) -> dict[str, Any]:
    """One line of a rejects file: where the row came from, the row, and its issues."""
    return {
        "source": ref_dict(checked.ref),
        "row": checked.record.data if checked.record is not None else checked.raw,
        "issues": [issue.to_dict() for issue in checked.issues],
    }


def convert_dataset(
    source: Source,
    output: Path,
    *,
    spec: DatasetSpec = DatasetSpec(),  # noqa: B008 - frozen, never mutated
    to: ConvertFormat = "sharegpt",
    rejects: Path | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> ConvertResult:
    """Write the valid rows of ``source`` as JSONL in ``to`` format, the others to ``rejects``.

    With ``to="hf"`` the output is a folder: the valid rows as ShareGPT in a saved Hugging Face
    ``Dataset`` (see :class:`~pipeline.data.hf_output.HfDatasetWriter`); the rejects file is
    JSONL all the same. ``rejects`` defaults to ``<output stem>.rejects.jsonl`` beside the
    output. Both are written under temporary names in their folders and renamed at the end, so
    a failure or a cancel leaves neither under its final name.

    Raises:
        DatasetError: the output or the rejects file is one of the inputs (or, for ``hf``, a
            folder that holds one, or an existing folder that is not a saved dataset), or
            ``to`` is unknown.
        JobCancelled: ``should_stop`` returned True.
    """
    started = time.perf_counter()
    output = Path(output)
    rejects = (
        Path(rejects) if rejects is not None else output.with_name(f"{output.stem}.rejects.jsonl")
    )
    if to not in ("sharegpt", "chatml", "hf"):
        raise DatasetError(f"unknown output format {to!r}", hint="use 'sharegpt', 'chatml' or 'hf'")
    dump = conversation_to_chatml if to == "chatml" else conversation_to_sharegpt
    paths = resolve_sources(source)
    _refuse_overwrite(paths, [output, rejects])
    if to == "hf":
        refuse_replacing_inputs(paths, output)
    counts: Counter[str] = Counter()
    stream = CheckedStream(paths, spec, on_event=on_event, should_stop=should_stop, stage="convert")
    writer = HfDatasetWriter(output) if to == "hf" else AtomicJsonlWriter(output)
    with writer as good, AtomicJsonlWriter(rejects) as bad:
        for checked in stream:
            if checked.conversation is not None:
                good.write(dump(checked.conversation))
            else:
                bad.write(reject_row(checked))
                counts.update(issue.code for issue in checked.issues)
        good.commit()
        bad.commit()
    for issue in stream.file_issues:
        counts[issue.code] += 1
    result = ConvertResult(
        output=output,
        rejects=rejects,
        valid=good.count,
        rejected=bad.count,
        counts_by_code=dict(counts.most_common()),
        file_issues=tuple(stream.file_issues),
    )
    on_event(
        StageDone(
            "convert",
            f"{result.valid:,} rows written to {output}, {result.rejected:,} rejected",
            time.perf_counter() - started,
        )
    )
    return result


__all__ = ["ConvertFormat", "ConvertResult", "convert_dataset", "reject_row"]
