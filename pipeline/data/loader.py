"""Files -> raw records, streaming.

Contract (docs/data-api.md): :func:`resolve_sources` turns a file, a folder or a glob into a
sorted list of dataset files; :func:`read_records` streams one file as :class:`RawRecord`
values and :class:`~pipeline.data.types.Issue` values; :func:`detect_format` names the format
of a file from its first records' keys.

How each file type is read (memory never grows with the file size):

* ``.jsonl`` is read in binary, one line at a time, parsed with orjson. Blank lines are
  skipped (they are not records); every other line is one record, parsed or not.
* ``.json`` holds one top-level array. It is always streamed: :class:`JsonArraySplitter`
  cuts the array into elements (tracking only strings and bracket depth) and each element is
  parsed on its own, so a broken element is one bad record and the rest are still read. A
  ``.json`` file whose first line is a whole JSON object is read as JSON Lines (the
  ``datasets`` library accepts those too).
* ``.csv`` is read line by line through :mod:`csv` (quoted cells may span lines). Empty cells
  are missing values; the cells of the message/history columns hold JSON and are parsed.
* ``.parquet`` is read with ``pyarrow.parquet.ParquetFile.iter_batches``; nulls are missing
  values. Parquet records have no line, only an index.

A UTF-8 byte order mark is reported once per file (code ``bom``, a warning) and skipped; the
rows are read normally. Records that cannot be parsed are :class:`BadRecord` values (with the
original text) in the internal stream and plain issues from :func:`read_records`.
"""

from __future__ import annotations

import csv
import glob
import io
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from pipeline.data.jsonio import JsonArraySplitter
from pipeline.data.types import FORMATS, DatasetSpec, FormatName, Issue, RecordRef
from pipeline.errors import DatasetError

EXTENSIONS: tuple[str, ...] = (".json", ".jsonl", ".csv", ".parquet")
"""File types a dataset can be made of (case-insensitive)."""
BOM = b"\xef\xbb\xbf"
_DETECT_RECORDS = 50
"""How many parseable records :func:`detect_format` looks at."""
_DETECT_ITEMS = 1000
"""How many items at most it reads to find them (a file of broken lines stays cheap)."""


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


# --------------------------------------------------------------------------------- sources


def _supported(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def _unsupported(path: Path) -> DatasetError:
    return DatasetError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}",
        hint="a dataset file must end in .json, .jsonl, .csv or .parquet; rename or convert it",
    )


def resolve_sources(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Turn a file, a folder, a glob, or a list of those into the dataset files to read.

    A folder contributes its ``*.json``, ``*.jsonl``, ``*.csv`` and ``*.parquet`` files (not
    hidden ones, not sub-folders), sorted by name; a glob its matching files, sorted, where
    files of other types are skipped as long as one supported file matches. Duplicates are
    dropped, order is kept.

    Raises:
        DatasetError: a path does not exist, a folder or glob holds no dataset file, or a file
            named directly has an unsupported type.
    """
    items = [source] if isinstance(source, str | Path) else list(source)
    if not items:
        raise DatasetError("no dataset given", hint="name a file, a folder or a glob")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and _supported(p)
            )
            if not files:
                raise DatasetError(
                    f"folder {path} holds no dataset file",
                    hint="put .json, .jsonl, .csv or .parquet files in it, or name the files",
                )
            found.extend(files)
        elif path.is_file():
            if not _supported(path):
                raise _unsupported(path)
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise DatasetError(
                    f"the pattern {str(item)!r} matches no file",
                    hint="check the folder and the pattern (quote it so the shell leaves it alone)",
                )
            files = [m for m in matches if _supported(m)]
            if not files:
                raise _unsupported(matches[0])
            found.extend(files)
        else:
            raise DatasetError(
                f"{path} does not exist",
                hint="check the path (relative paths start at the current folder)",
            )
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# --------------------------------------------------------------------------------- issues


def _issue(ref: RecordRef, code: str, reason: str, field: str = "") -> Issue:
    return Issue(ref.path, ref.line, ref.index, field, reason, code)


def _bom_issue(path: str) -> Issue:
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


def _empty_issue(path: str, what: str) -> Issue:
    return Issue(
        path,
        None,
        None,
        "",
        f"the file {what}, so it has no records; add records or leave the file out",
        "empty_file",
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def _preview(raw: bytes | str, limit: int = 40) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_object(
    data: bytes,
    ref: RecordRef,
    span: tuple[int, int] | None,
    *,
    at_eof: bool = False,
    what: str = "line",
) -> RawRecord | BadRecord:
    """Parse one JSON object (a JSONL line or a JSON-array element) into a record."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        return _bad_json(data, err, ref, span, at_eof=at_eof, what=what)
    if type(value) is dict:
        return RawRecord(ref, value, span)
    issue = _issue(
        ref,
        "not_an_object",
        f"the {what} holds a JSON {_json_kind(value)} ({_preview(data)}), not an object; each "
        'record must be a JSON object such as {"conversations": [...]} or '
        '{"instruction": ..., "output": ...}',
    )
    return BadRecord(ref, (issue,), data.decode("utf-8", "replace").rstrip("\r\n"), None, span)


def _bad_json(
    data: bytes,
    err: orjson.JSONDecodeError,
    ref: RecordRef,
    span: tuple[int, int] | None,
    *,
    at_eof: bool,
    what: str,
) -> BadRecord:
    raw = data.decode("utf-8", "replace").rstrip("\r\n")
    first = ref.line or 1
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line_start = data.rfind(b"\n", 0, bad.start) + 1
        line = first + data.count(b"\n", 0, bad.start)
        issue = Issue(
            ref.path,
            line,
            ref.index,
            "",
            f"invalid UTF-8 at byte offset {bad.start - line_start} of line {line} "
            f"(byte 0x{data[bad.start]:02X}); re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)",
            "invalid_utf8",
        )
        return BadRecord(ref, (issue,), raw, None, span)
    # orjson counts lines from the start of the record; an error "after" the final newline
    # (a line that ends too early) belongs at the end of the last line of the record.
    text = data.decode("utf-8").rstrip("\r\n")
    n_lines = text.count("\n") + 1
    if err.lineno <= n_lines:
        line, column = first + err.lineno - 1, err.colno
    else:
        line, column = first + n_lines - 1, len(text) - text.rfind("\n")
    if at_eof and not data.endswith(b"\n") and err.msg.startswith("unexpected end of data"):
        code = "truncated_json"
        reason = (
            f"the last {what} is cut off ({err.msg}); the file looks truncated — export it "
            "again or delete the partial record"
        )
    elif not data.strip():
        code = "empty_record"
        reason = f"the {what} is empty; remove it"
    else:
        code = "malformed_json"
        hint = (
            "each line of a .jsonl file must be one complete JSON object"
            if what == "line"
            else "fix the JSON of this record"
        )
        reason = (
            f"invalid JSON: {err.msg} at line {line} column {column} "
            f"(near {_preview(text[max(0, err.pos - 15) : err.pos + 15])!r}); {hint}"
        )
    issue = Issue(ref.path, line, ref.index, "", reason, code)
    return BadRecord(ref, (issue,), raw, None, span)


# --------------------------------------------------------------------------------- readers


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
        return _parse_object(data, ref, span)


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
                yield _bom_issue(display)
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
                yield _bad_json(
                    line, err, ref, (start, len(line)), at_eof=offset >= self.size, what="line"
                )
                index += 1
                continue
            ref = RecordRef(display, index, lineno)
            if type(value) is dict:
                yield RawRecord(ref, value, (start, len(line)))
            else:
                yield _parse_object(line, ref, (start, len(line)))
            index += 1
        if index == 0:
            yield _empty_issue(display, "is empty" if self.size <= 3 else "holds only blank lines")


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
                yield _bom_issue(display)
                offset = 3
            stripped = head[offset:].lstrip()
            if not stripped:
                yield _empty_issue(display, "is empty")
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
                    f"{_preview(stripped, 20)!r}); wrap the records in [ ... ] or write one "
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
                    issue = _issue(
                        ref,
                        "record_too_large",
                        f"{piece.message}, so reading stopped here; a closing bracket is "
                        "probably missing — fix the JSON of this record",
                    )
                    yield BadRecord(ref, (issue,), None, None, (piece.offset, 0))
                    return
                yield _parse_object(
                    piece.data, ref, span, at_eof=piece.kind == "truncated", what="record"
                )
                index += 1
            self.position = self.size
            if index == 0:
                yield _empty_issue(display, "holds an empty array")

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
        return _parse_object(data, ref, span, what="line" if self.lines_mode else "record")


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
                    issue = _issue(ref, "csv_bad_row", f"the CSV row cannot be read ({err})")
                    yield BadRecord(ref, (issue,), feed.raw(), None, (start, feed.offset - start))
                    index += 1
                    continue
                finally:
                    self.position = feed.offset
                if feed.bom and line == 1:
                    yield _bom_issue(display)
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
                yield _empty_issue(display, what)

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
            issue = _issue(
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
                    _issue(
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


class ParquetReader(FileReader):
    """Parquet through pyarrow, in record batches; nulls are missing values."""

    batch_size = 2048

    def __init__(self, path: Path, spec: DatasetSpec | None = None) -> None:
        super().__init__(path, spec)
        self._file: Any = None  # pyarrow ParquetFile, kept for read_at
        self._group_starts: list[int] = []
        self._cached: tuple[int, Any] | None = None  # (row group, pyarrow Table)

    def _open(self) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path)

    def __iter__(self) -> Iterator[Item]:
        import pyarrow as pa

        display = self.display
        try:
            pf = self._open()
        except (pa.ArrowException, OSError) as err:
            yield Issue(
                display,
                None,
                None,
                "",
                f"the file is not a readable Parquet file ({err}); export it again",
                "bad_parquet",
            )
            return
        total = pf.metadata.num_rows
        index = 0
        try:
            for batch in pf.iter_batches(batch_size=self.batch_size):
                for row in batch.to_pylist():
                    data = {k: v for k, v in row.items() if v is not None}
                    yield RawRecord(RecordRef(display, index, None), data, None)
                    index += 1
                self.position = self.size * index // max(total, 1)
        except (pa.ArrowException, OSError) as err:
            yield Issue(
                display,
                None,
                None,
                "",
                f"reading stopped at record {index}: the Parquet data is damaged ({err}); "
                "export the file again",
                "bad_parquet",
            )
            return
        if index == 0:
            yield _empty_issue(display, "has no rows")

    def read_at(self, ref: RecordRef, span: tuple[int, int] | None) -> RawRecord | BadRecord:
        """Row ``ref.index``: its row group is read once and kept for the next calls."""
        if self._file is None:
            self._file = self._open()
            meta = self._file.metadata
            starts = [0]
            for group in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(group).num_rows)
            self._group_starts = starts
        starts = self._group_starts
        if not 0 <= ref.index < starts[-1]:
            raise IndexError(f"{self.display} has no record {ref.index}")
        group = bisect_right(starts, ref.index) - 1
        if self._cached is None or self._cached[0] != group:
            self._cached = (group, self._file.read_row_group(group))
        row = self._cached[1].slice(ref.index - starts[group], 1).to_pylist()[0]
        return RawRecord(ref, {k: v for k, v in row.items() if v is not None}, None)


def open_reader(path: Path, spec: DatasetSpec | None = None) -> FileReader:
    """The reader for one dataset file, chosen by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return JsonlReader(path, spec)
    if suffix == ".json":
        return JsonArrayReader(path, spec)
    if suffix == ".csv":
        return CsvReader(path, spec)
    if suffix == ".parquet":
        return ParquetReader(path, spec)
    raise _unsupported(path)


def read_records(path: Path, *, spec: DatasetSpec | None = None) -> Iterator[RawRecord | Issue]:
    """Stream the records of one file; problems become issues and reading goes on.

    ``spec`` names the CSV columns that hold JSON (default: ``conversations``, ``messages``,
    ``history``). A record that cannot be parsed yields its issues instead of a record.
    """
    for item in open_reader(path, spec):
        if isinstance(item, BadRecord):
            yield from item.issues
        else:
            yield item


# --------------------------------------------------------------------------------- formats


def _format_votes(data: dict[str, Any], spec: DatasetSpec) -> list[FormatName]:
    votes: list[FormatName] = []
    share, chat = spec.column_map("sharegpt"), spec.column_map("chatml")
    for fmt, cols in (("sharegpt", share), ("chatml", chat)):
        if cols["messages"] in data:
            votes.append(fmt)  # type: ignore[arg-type]  # literal from the tuple above
    if len(votes) == 2:  # same column name: tell them apart by the first turn's keys
        turns = data[share["messages"]]
        first = turns[0] if isinstance(turns, list) and turns else None
        if isinstance(first, dict):
            if chat["role"] in first and share["role"] not in first:
                votes = ["chatml"]
            elif share["role"] in first and chat["role"] not in first:
                votes = ["sharegpt"]
    alpaca = spec.column_map("alpaca")
    if alpaca["prompt"] in data or alpaca["response"] in data:
        votes.append("alpaca")
    return votes


def guess_format(records: Sequence[dict[str, Any]], spec: DatasetSpec) -> FormatName | None:
    """The format most of ``records`` look like, or None when none matches."""
    counts: dict[FormatName, int] = dict.fromkeys(FORMATS, 0)
    for data in records:
        for fmt in _format_votes(data, spec)[:1]:
            counts[fmt] += 1
    best = max(FORMATS, key=lambda f: counts[f])  # ties: sharegpt, chatml, alpaca
    return best if counts[best] else None


def format_error(records: Sequence[dict[str, Any]], spec: DatasetSpec) -> str:
    """Why no format matched: the keys found and the keys each format expects."""
    keys = sorted({k for data in records for k in data})
    share, chat, alpaca = (spec.column_map(f) for f in ("sharegpt", "chatml", "alpaca"))
    return (
        f"cannot tell the dataset format: the records have the keys {keys}, but "
        f"ShareGPT expects {share['messages']!r} (a list of {share['role']!r}/"
        f"{share['content']!r} turns), ChatML {chat['messages']!r} (a list of "
        f"{chat['role']!r}/{chat['content']!r} messages) and Alpaca {alpaca['prompt']!r} and "
        f"{alpaca['response']!r}"
    )


FORMAT_HINT = (
    "set the format and the column names (DatasetSpec.format / columns, --format) when the "
    "file uses other names"
)


def detect_format(path: Path, spec: DatasetSpec = DatasetSpec()) -> FormatName:  # noqa: B008
    """The format of one file: ``spec.format`` if set, else what its first records look like.

    Raises:
        DatasetError: no record matches a format (the message names the keys found and the
            keys each format expects), or the file has no parseable record at all.
    """
    if spec.format is not None:
        return spec.format
    records: list[dict[str, Any]] = []
    for n, item in enumerate(open_reader(path, spec)):
        if isinstance(item, RawRecord):
            records.append(item.data)
        if len(records) >= _DETECT_RECORDS or n >= _DETECT_ITEMS:
            break
    if not records:
        raise DatasetError(
            f"{path}: no readable record to detect the format from",
            hint="validate the file to see what is wrong with its records",
        )
    fmt = guess_format(records, spec)
    if fmt is None:
        raise DatasetError(f"{path}: {format_error(records, spec)}", hint=FORMAT_HINT)
    return fmt
