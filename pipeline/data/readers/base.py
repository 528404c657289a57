"""The base of every file reader: streams one file, re-reads one record on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.data.readers.json_object import parse_object
from pipeline.data.readers.records import BadRecord, Item, RawRecord
from pipeline.data.types import DatasetSpec, RecordRef

BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark: reported once per file (a warning) and skipped."""


class FileReader:
    """Streams the records of one file; :meth:`read_at` re-reads one of them later.

    ``position`` is the number of bytes consumed so far (for progress) and ``size`` the file's
    size. Readers hold no open file between calls.
    """

    def __init__(self, path: Path, spec: DatasetSpec | None = None) -> None:
        self.path = path
        self.display = str(path)
        self.spec = spec or DatasetSpec()
        self.size = path.stat().st_size
        self.position = 0

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError

    def read_at(self, ref: RecordRef, span: tuple[int, int] | None) -> RawRecord | BadRecord:
        """Parse the record at ``span`` again (the same result as the streaming pass)."""
        if span is None:
            raise ValueError("this reader needs a byte span")
        with self.path.open("rb") as f:
            f.seek(span[0])
            data = f.read(span[1])
        return self._parse_span(data, ref, span)

    def _parse_span(
        self, data: bytes, ref: RecordRef, span: tuple[int, int]
    ) -> RawRecord | BadRecord:
        return parse_object(data, ref, span)
