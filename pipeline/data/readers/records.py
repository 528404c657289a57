"""What a file reader yields: records, broken records, and the issues they carry.

:class:`RawRecord` is one parsed record, :class:`BadRecord` one that could not be parsed (with
its original text), and a plain :class:`~pipeline.data.types.Issue` with index None a
whole-file problem. The small factories below build the issues every reader shares (a BOM, an
empty file, a problem with one record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.data.types import Issue, RecordRef


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One parsed record: a JSON object, a CSV row or a Parquet row, and where it came from."""

    ref: RecordRef
    data: dict[str, Any]
    """The parsed object (CSV cells that hold JSON lists are parsed; missing cells absent)."""
    span: tuple[int, int] | None = None
    """(byte offset, byte length) of the record in its file; None for Parquet."""


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be parsed (or only partly: a CSV row with a bad JSON cell)."""

    ref: RecordRef
    issues: tuple[Issue, ...]
    raw: str | None
    """The original text (undecodable bytes replaced), when there is one."""
    data: dict[str, Any] | None = None
    """What could be parsed (the CSV cells), else None."""
    span: tuple[int, int] | None = None


Item = RawRecord | BadRecord | Issue
"""What a reader yields: a record, a broken record, or a whole-file issue (index None)."""


def record_issue(ref: RecordRef, code: str, reason: str, field: str = "") -> Issue:
    """An issue of the record at ``ref``."""
    return Issue(ref.path, ref.line, ref.index, field, reason, code)


def bom_issue(path: str) -> Issue:
    """The warning for a file that starts with a UTF-8 byte order mark."""
    return Issue(
        path,
        1,
        None,
        "",
        "the file starts with a UTF-8 byte order mark (BOM); it was skipped and the rows were "
        "read normally (they count as valid) — save the file as UTF-8 without BOM to silence "
        "this warning",
        "bom",
        "warning",
    )


def empty_issue(path: str, what: str) -> Issue:
    """The error for a file without records; ``what`` says why (``"is empty"``, ...)."""
    return Issue(
        path,
        None,
        None,
        "",
        f"the file {what}, so it has no records; add records or leave the file out",
        "empty_file",
    )
