"""``.csv``: a header row, then one record per row, read line by line through :mod:`csv`.

Quoted cells may span lines. Empty cells are missing values; the cells of the message/history
columns (per :class:`~pipeline.data.types.DatasetSpec`) hold JSON and are parsed. The module is
named ``csv_file`` so that it never shadows the standard :mod:`csv`.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from pipeline.data.readers.base import BOM, FileReader
from pipeline.data.readers.records import (
    BadRecord,
    Item,
    RawRecord,
    bom_issue,
    empty_issue,
    record_issue,
)
from pipeline.data.types import FORMATS, DatasetSpec, Issue, RecordRef


class _LineFeed:
    """Feeds decoded lines to :func:`csv.reader` and keeps track of bytes, lines and UTF-8."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.offset = 0
        self.lines = 0
        self.bad_utf8: list[tuple[int, int, int]] = []  # (line, byte in line, byte value)
        self.current: list[str] = []  # the lines of the row being read
        self.bom = False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = next(self._f)
        if self.offset == 0 and raw.startswith(BOM):
            self.bom = True
            raw = raw[3:]
            self.offset = 3
        self.offset += len(raw)
        self.lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            self.bad_utf8.append((self.lines, err.start, raw[err.start]))
            text = raw.decode("utf-8", "replace")
        self.current.append(text)
        return text

    def raw(self) -> str:
        """The original text of the row just read (for rejects and the record viewer)."""
        return "".join(self.current).rstrip("\r\n")


class CsvReader(FileReader):
    """CSV with a header row; cells of the message/history columns hold JSON."""

    def __init__(self, path: Path, spec: DatasetSpec | None = None) -> None:
        super().__init__(path, spec)
        self.header: list[str] = []
        json_cols = {self.spec.column_map(fmt).get("messages") for fmt in FORMATS}
        json_cols.add(self.spec.column_map("alpaca")["history"])
        json_cols.discard(None)
        self._json_columns = frozenset(c for c in json_cols if c)
        # Long cells (whole conversations) are normal; the default limit is 128 KiB.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

    def __iter__(self) -> Iterator[Item]:
        display = self.display
        with self.path.open("rb") as f:
            feed = _LineFeed(f)
            reader = csv.reader(feed)
            index = 0
            while True:
                start, line = feed.offset, feed.lines + 1
                feed.bad_utf8.clear()
                feed.current.clear()
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    ref = RecordRef(display, index, line)
                    issue = record_issue(ref, "csv_bad_row", f"the CSV row cannot be read ({err})")
                    yield BadRecord(ref, (issue,), feed.raw(), None, (start, feed.offset - start))
                    index += 1
                    continue
                finally:
                    self.position = feed.offset
                if feed.bom and line == 1:
                    yield bom_issue(display)
                if not any(c.strip() for c in cells):
                    continue  # blank line
                if not self.header:
                    self.header = [c.strip() for c in cells]
                    continue
                ref = RecordRef(display, index, line)
                span = (start, feed.offset - start)
                if feed.bad_utf8:
                    bad_line, at, byte = feed.bad_utf8[0]
                    issue = Issue(
                        display,
                        bad_line,
                        index,
                        "",
                        f"invalid UTF-8 at byte offset {at} of line {bad_line} "
                        f"(byte 0x{byte:02X}); re-save the file as UTF-8",
                        "invalid_utf8",
                    )
                    yield BadRecord(ref, (issue,), feed.raw(), None, span)
                else:
                    yield self._row(cells, ref, span, feed.raw)
                index += 1
            if index == 0:
                what = "is empty" if not self.header else "has a header but no rows"
                yield empty_issue(display, what)

    def _read_header(self) -> None:
        with self.path.open("rb") as f:
            for cells in csv.reader(_LineFeed(f)):
                if any(c.strip() for c in cells):
                    self.header = [c.strip() for c in cells]
                    return

    def _row(
        self, cells: list[str], ref: RecordRef, span: tuple[int, int], raw: Callable[[], str]
    ) -> RawRecord | BadRecord:
        header = self.header
        if len(cells) != len(header):
            issue = record_issue(
                ref,
                "csv_bad_row",
                f"the row has {len(cells)} cells but the header has {len(header)} columns; "
                "quote cells that contain commas, quotes or line breaks",
            )
            return BadRecord(ref, (issue,), raw(), None, span)
        data: dict[str, Any] = {k: v for k, v in zip(header, cells, strict=True) if v != ""}
        issues: list[Issue] = []
        for key in self._json_columns.intersection(data):
            try:
                data[key] = orjson.loads(data[key])
            except orjson.JSONDecodeError as err:
                issues.append(
                    record_issue(
                        ref,
                        "csv_bad_json_cell",
                        f"the {key!r} cell must hold JSON (a list) but is not valid JSON: "
                        f"{err.msg} at character {err.pos}; write the list as JSON and double "
                        'the quotes inside the CSV cell ("" for ")',
                        key,
                    )
                )
        if issues:
            return BadRecord(ref, tuple(issues), raw(), data, span)
        return RawRecord(ref, data, span)

    def _parse_span(
        self, data: bytes, ref: RecordRef, span: tuple[int, int]
    ) -> RawRecord | BadRecord:
        if not self.header:
            self._read_header()
        text = data.decode("utf-8", "replace")
        cells = next(csv.reader(io.StringIO(text, newline="")), [])
        return self._row(cells, ref, span, lambda: text.rstrip("\r\n"))
