"""``.json``: one top-level array of records, always streamed element by element.

:class:`~pipeline.data.jsonio.JsonArraySplitter` cuts the array into elements (tracking only
strings and bracket depth) and each element is parsed on its own, so a broken element is one
bad record and the rest are still read. A ``.json`` file whose first line is a whole JSON
object is read as JSON Lines (the ``datasets`` library accepts those too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import orjson

from pipeline.data.jsonio import JsonArraySplitter
from pipeline.data.readers.base import BOM
from pipeline.data.readers.json_object import parse_object, preview
from pipeline.data.readers.jsonl import JsonlReader
from pipeline.data.readers.records import (
    BadRecord,
    Item,
    RawRecord,
    bom_issue,
    empty_issue,
    record_issue,
)
from pipeline.data.types import Issue, RecordRef


class JsonArrayReader(JsonlReader):
    """A ``.json`` file: one top-level array of objects, streamed element by element."""

    lines_mode = False
    """True when the file turned out to be JSON Lines (read as such)."""

    def __iter__(self) -> Iterator[Item]:
        display = self.display
        with self.path.open("rb") as f:
            head = f.read(1 << 16)
            offset = 0
            if head.startswith(BOM):
                yield bom_issue(display)
                offset = 3
            stripped = head[offset:].lstrip()
            if not stripped:
                yield empty_issue(display, "is empty")
                return
            offset += len(head) - offset - len(stripped)
            line = 1 + head.count(b"\n", 0, offset)
            if stripped[:1] == b"{" and self._first_line_is_object(f, offset):
                self.lines_mode = True
                f.seek(offset)
                yield from self._lines(f, offset, line - 1)
                return
            if stripped[:1] != b"[":
                yield Issue(
                    display,
                    line,
                    None,
                    "",
                    f"the file does not hold a JSON array of records (it starts with "
                    f"{preview(stripped, 20)!r}); wrap the records in [ ... ] or write one "
                    "object per line in a .jsonl file",
                    "not_an_array",
                )
                return
            f.seek(offset + 1)
            splitter = JsonArraySplitter(f, offset=offset + 1, line=line)
            index = 0
            for piece in splitter:
                self.position = splitter.position
                if piece.kind in ("syntax", "unclosed"):
                    yield self._syntax_issue(piece.line, piece.kind, piece.message)
                    continue
                ref = RecordRef(display, index, piece.line)
                span = (piece.offset, len(piece.data))
                if piece.kind == "too_large":
                    issue = record_issue(
                        ref,
                        "record_too_large",
                        f"{piece.message}, so reading stopped here; a closing bracket is "
                        "probably missing — fix the JSON of this record",
                    )
                    yield BadRecord(ref, (issue,), None, None, (piece.offset, 0))
                    return
                yield parse_object(
                    piece.data, ref, span, at_eof=piece.kind == "truncated", what="record"
                )
                index += 1
            self.position = self.size
            if index == 0:
                yield empty_issue(display, "holds an empty array")

    def _syntax_issue(self, line: int, kind: str, message: str) -> Issue:
        if kind == "unclosed":
            return Issue(
                self.display,
                line,
                None,
                "",
                "the file ends before the closing ']' of the array; the file looks truncated — "
                "export it again or add the missing ']'",
                "truncated_json",
            )
        return Issue(
            self.display,
            line,
            None,
            "",
            f"invalid JSON: {message} at line {line}; the records around it were still read, "
            "but fix the file so other tools can read it",
            "malformed_json",
        )

    def _first_line_is_object(self, f: BinaryIO, offset: int) -> bool:
        f.seek(offset)
        first = f.readline()
        try:
            return type(orjson.loads(first)) is dict
        except orjson.JSONDecodeError:
            return False

    def _parse_span(
        self, data: bytes, ref: RecordRef, span: tuple[int, int]
    ) -> RawRecord | BadRecord:
        return parse_object(data, ref, span, what="line" if self.lines_mode else "record")
