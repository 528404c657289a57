"""Validation: a whole dataset checked and summed up in a :class:`ValidationReport`.

Contract (docs/data-api.md): :func:`iter_checked` streams every record of every file in
order as a :class:`CheckedRecord`; :func:`validate_dataset` sums it up in a
:class:`ValidationReport`; :func:`convert_dataset` writes the valid rows as ShareGPT or ChatML
JSONL and the rejected ones, with their issues, to a rejects file.

This module holds the report (:class:`ValidationReport`, :class:`ReportBuilder`) and the
validate job. The streaming core lives in :mod:`pipeline.data.checked_stream` and the convert
job in :mod:`pipeline.data.convert_job`; their public names are re-exported here, so
``from pipeline.data.validate import ...`` keeps working for all of them.

A record is valid exactly when ``conversation`` is not None; its ``issues`` are then empty.
Whole-file issues (a BOM, an empty file, ...) are in the report too; a BOM is only a warning.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from pipeline.data.checked_stream import (
    DEFAULT_CHUNK_SIZE,
    CheckedRecord,
    CheckedStream,
    Source,
    iter_checked,
)
from pipeline.data.convert_job import ConvertResult, convert_dataset, reject_row
from pipeline.data.types import DatasetSpec, FormatName, Issue
from pipeline.events import EventSink, StageDone, StopCheck, ignore_event, never_stop


@dataclass(frozen=True, slots=True)
class ValidationReport:
    sources: tuple[str, ...]
    formats: dict[str, FormatName]
    """Per file (files without any parseable record are absent)."""
    total: int
    valid: int
    invalid: int
    issues: tuple[Issue, ...]
    """Capped at ``max_issues``, sorted by file, line and index; ``issue_count`` has all."""
    issue_count: int
    counts_by_code: dict[str, int]

    @property
    def ok(self) -> bool:
        """No invalid record and no whole-file error (warnings such as a BOM are fine)."""
        return self.invalid == 0 and not any(
            i.severity == "error" for i in self.issues if i.index is None
        )

    def summary(self) -> str:
        text = f"{self.total:,} rows: {self.valid:,} valid, {self.invalid:,} invalid"
        if self.issue_count:
            text += f"; {self.issue_count:,} issues"
        return text


class ReportBuilder:
    """Sums up checked records and whole-file issues into a :class:`ValidationReport`."""

    def __init__(self, max_issues: int) -> None:
        self.max_issues = max_issues
        self.total = self.valid = 0
        self.issues: list[Issue] = []
        self.issue_count = 0
        self.counts: Counter[str] = Counter()

    def add_issue(self, issue: Issue) -> None:
        self.issue_count += 1
        self.counts[issue.code] += 1
        if len(self.issues) < self.max_issues:
            self.issues.append(issue)

    def add(self, checked: CheckedRecord) -> None:
        self.total += 1
        if checked.conversation is not None:
            self.valid += 1
        for issue in checked.issues:
            self.add_issue(issue)

    def report(self, stream: CheckedStream) -> ValidationReport:
        order = {r.display: n for n, r in enumerate(stream.readers)}
        issues = sorted(
            self.issues,
            key=lambda i: (order.get(i.path, -1), i.line or 0, -1 if i.index is None else i.index),
        )
        return ValidationReport(
            sources=tuple(r.display for r in stream.readers),
            formats=dict(stream.formats),
            total=self.total,
            valid=self.valid,
            invalid=self.total - self.valid,
            issues=tuple(issues),
            issue_count=self.issue_count,
            counts_by_code=dict(self.counts.most_common()),
        )


def validate_dataset(
    source: Source,
    spec: DatasetSpec = DatasetSpec(),  # noqa: B008 - frozen, never mutated
    *,
    max_issues: int = 10_000,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> ValidationReport:
    """Check every record of ``source``; see :class:`ValidationReport`."""
    started = time.perf_counter()
    builder = ReportBuilder(max_issues)
    stream = CheckedStream(
        source,
        spec,
        on_event=on_event,
        should_stop=should_stop,
        on_file_issue=builder.add_issue,
        stage="validate",
    )
    for checked in stream:
        builder.add(checked)
    report = builder.report(stream)
    on_event(StageDone("validate", report.summary(), time.perf_counter() - started))
    return report


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CheckedRecord",
    "CheckedStream",
    "ConvertResult",
    "ReportBuilder",
    "Source",
    "ValidationReport",
    "convert_dataset",
    "iter_checked",
    "reject_row",
    "validate_dataset",
]
