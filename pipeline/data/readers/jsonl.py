"""``.jsonl``: one JSON object per line, read in binary and parsed with orjson.

Blank lines are skipped (they are not records); every other line is one record, parsed or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import orjson

from pipeline.data.readers.base import BOM, FileReader
from pipeline.data.readers.json_object import bad_json, parse_object
from pipeline.data.readers.records import Item, RawRecord, bom_issue, empty_issue
from pipeline.data.types import RecordRef


class JsonlReader(FileReader):
    """JSON Lines: one object per line, read in binary."""

    def __iter__(self) -> Iterator[Item]:
        with self.path.open("rb") as f:
            yield from self._lines(f, 0, 0)

    def _lines(self, f: BinaryIO, offset: int, lineno: int) -> Iterator[Item]:
        display = self.display
        index = 0
        if offset == 0:
            head = f.read(3)
            if head == BOM:
                yield bom_issue(display)
                offset = 3
            f.seek(offset)
        for line in f:
            lineno += 1
            start = offset
            offset += len(line)
            self.position = offset
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                if not line.strip():
                    continue  # blank lines are not records
                ref = RecordRef(display, index, lineno)
                yield bad_json(
                    line, err, ref, (start, len(line)), at_eof=offset >= self.size, what="line"
                )
                index += 1
                continue
            ref = RecordRef(display, index, lineno)
            if type(value) is dict:
                yield RawRecord(ref, value, (start, len(line)))
            else:
                yield parse_object(line, ref, (start, len(line)))
            index += 1
        if index == 0:
            yield empty_issue(display, "is empty" if self.size <= 3 else "holds only blank lines")
