"""Random access to a checked dataset, for the TUI's record browser.

Contract (docs/data-api.md): :func:`open_dataset` makes one streaming pass over the source
(validating everything, reporting :class:`~pipeline.events.Progress` in bytes) and returns an
:class:`OpenedDataset` that can hand back any record as a
:class:`~pipeline.data.validate.CheckedRecord` in well under 5 ms.

What is kept, so memory stays small for a million rows: for every record its byte offset,
byte length and line in three ``array('q')`` (24 bytes a record; Parquet records, which have
no bytes of their own, are found by index through a one-row-group cache); the sorted global
indices of the invalid records; and the issues of the invalid records only. Records are
read again on demand: JSONL lines, JSON-array elements and CSV rows by seeking to their
offset. A valid record is converted again (the result is the same: it passed every check);
an invalid one gets the issues found in the pass. If a file changes after it was opened,
:meth:`OpenedDataset.checked` raises :class:`~pipeline.errors.DatasetError`.
"""

from __future__ import annotations

import os
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from pathlib import Path

from pipeline.data.converter import Converter
from pipeline.data.loader import BadRecord, FileReader
from pipeline.data.types import DatasetSpec, FormatName, Issue, RecordRef
from pipeline.data.validate import (
    CheckedRecord,
    CheckedStream,
    ReportBuilder,
    Source,
    ValidationReport,
)
from pipeline.errors import DatasetError
from pipeline.events import EventSink, StageDone, StopCheck, ignore_event, never_stop


class OpenedDataset:
    """A dataset after one checking pass; see the module docstring."""

    def __init__(
        self,
        *,
        readers: Sequence[FileReader],
        formats: dict[str, FormatName],
        spec: DatasetSpec,
        file_starts: Sequence[int],
        offsets: array[int],
        lengths: array[int],
        lines: array[int],
        error_indices: array[int],
        issues: dict[int, tuple[Issue, ...]],
        report: ValidationReport,
        stamps: Sequence[tuple[int, int]],
    ) -> None:
        self.paths: tuple[Path, ...] = tuple(r.path for r in readers)
        self.formats = formats
        self.spec = spec
        self.report = report
        self.error_indices: Sequence[int] = error_indices
        """Sorted global indices of the invalid records."""
        self._readers = list(readers)
        self._converters = [
            Converter(formats[r.display], spec) if r.display in formats else None for r in readers
        ]
        self._starts = list(file_starts)
        self._offsets = offsets
        self._lengths = lengths
        self._lines = lines
        self._issues = issues
        self._stamps = list(stamps)

    def __len__(self) -> int:
        return len(self._offsets)

    def issues_for(self, index: int) -> tuple[Issue, ...]:
        """The issues of record ``index`` (empty when it is valid)."""
        return self._issues.get(index, ())

    def next_error(self, index: int) -> int | None:
        """The first invalid record after ``index``, or None."""
        at = bisect_right(self.error_indices, index)
        return self.error_indices[at] if at < len(self.error_indices) else None

    def previous_error(self, index: int) -> int | None:
        """The last invalid record before ``index``, or None."""
        at = bisect_left(self.error_indices, index)
        return self.error_indices[at - 1] if at > 0 else None

    def checked(self, index: int) -> CheckedRecord:
        """Record ``index`` (0-based across all files), read again from its file.

        Raises:
            IndexError: no such record.
            DatasetError: the file changed or vanished since the dataset was opened.
        """
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} is out of range (0..{len(self) - 1})")
        f = bisect_right(self._starts, index) - 1
        reader = self._readers[f]
        self._check_unchanged(f)
        line = self._lines[index]
        ref = RecordRef(reader.display, index - self._starts[f], line if line >= 0 else None)
        offset = self._offsets[index]
        span = (offset, self._lengths[index]) if offset >= 0 else None
        try:
            item = reader.read_at(ref, span)
        except OSError as err:
            raise DatasetError(
                f"{reader.display}: cannot read record {ref.index} ({err})",
                hint="open the dataset again",
            ) from err
        issues = self._issues.get(index)
        if isinstance(item, BadRecord):
            return CheckedRecord.rejected(item, issues)
        convert = self._converters[f]
        if issues is None and convert is not None:
            converted = convert(item)
            if converted.conversation is not None:
                return CheckedRecord(item, ref, converted.conversation, (), None, span)
            issues = tuple(converted.issues)
        return CheckedRecord(item, ref, None, issues or (), None, span)

    def _check_unchanged(self, f: int) -> None:
        path = self._readers[f].path
        try:
            st = os.stat(path)
        except OSError as err:
            raise DatasetError(
                f"{path} cannot be read any more ({err.strerror})", hint="open the dataset again"
            ) from err
        if (st.st_size, st.st_mtime_ns) != self._stamps[f]:
            raise DatasetError(
                f"{path} changed since the dataset was opened", hint="open the dataset again"
            )


def open_dataset(
    source: Source,
    spec: DatasetSpec = DatasetSpec(),  # noqa: B008 - frozen, never mutated
    *,
    max_issues: int = 10_000,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> OpenedDataset:
    """Check ``source`` in one streaming pass and keep what random access needs.

    ``max_issues`` caps the issues in the report (``issues_for`` keeps all of them).
    Raises :class:`~pipeline.errors.JobCancelled` when ``should_stop`` says so.
    """
    started = time.perf_counter()
    builder = ReportBuilder(max_issues)
    stream = CheckedStream(
        source,
        spec,
        on_event=on_event,
        should_stop=should_stop,
        on_file_issue=builder.add_issue,
        stage="open",
    )
    stamps = []
    for reader in stream.readers:
        st = os.stat(reader.path)
        stamps.append((st.st_size, st.st_mtime_ns))
    file_no = {r.display: n for n, r in enumerate(stream.readers)}
    counts = [0] * len(stream.readers)
    offsets, lengths, lines, errors = array("q"), array("q"), array("q"), array("q")
    issues: dict[int, tuple[Issue, ...]] = {}
    for index, checked in enumerate(stream):
        builder.add(checked)
        counts[file_no[checked.ref.path]] += 1
        span = checked.span
        if span is None:
            offsets.append(-1)
            lengths.append(0)
        else:
            offsets.append(span[0])
            lengths.append(span[1])
        line = checked.ref.line
        lines.append(-1 if line is None else line)
        if checked.conversation is None:
            errors.append(index)
            issues[index] = checked.issues
    starts: list[int] = []
    total = 0
    for count in counts:
        starts.append(total)
        total += count
    report = builder.report(stream)
    on_event(StageDone("open", report.summary(), time.perf_counter() - started))
    return OpenedDataset(
        readers=stream.readers,
        formats=dict(stream.formats),
        spec=spec,
        file_starts=starts,
        offsets=offsets,
        lengths=lengths,
        lines=lines,
        error_indices=errors,
        issues=issues,
        report=report,
        stamps=stamps,
    )
