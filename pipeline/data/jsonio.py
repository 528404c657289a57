"""Byte-level JSON I/O: a streaming splitter for JSON-array files and an atomic JSONL writer.

:class:`JsonArraySplitter` walks a file that holds one top-level JSON array and yields each
element's bytes with its byte offset and start line, without ever holding more than one
chunk plus one element in memory. It does *not* parse the elements (the caller does, with
orjson); it only tracks string literals and bracket depth, so one broken element does not stop
the others from being read, and every syntax problem gets a line number.

:class:`AtomicJsonlWriter` writes JSON Lines to a temporary file in the destination folder and
renames it over the final name only on :meth:`~AtomicJsonlWriter.commit`, so an interrupted
job never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import orjson

# One token: a complete string literal, a bracket, or a lone quote. The lone quote only
# matches when the string's closing quote is not in the buffer yet (more data needed).
# Possessive quantifiers keep the regex linear on long strings.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]|"', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_RBRACKET = ord("]")
_RBRACE = ord("}")

_MISSING_COMMA = "missing ',' between two elements of the array"
_TRAILING_COMMA = "extra ',' before the closing ']' of the array"
_EXTRA_COMMA = "extra ',' between elements of the array"
_STRAY_BRACE = "unexpected '}' between elements of the array"

PieceKind = Literal["element", "scalar", "syntax", "truncated", "too_large", "unclosed"]


@dataclass(frozen=True, slots=True)
class ArrayPiece:
    """One thing found inside the top-level array.

    ``element`` is an object or array element and ``scalar`` a string/number/literal element
    (both with ``data`` = the element's bytes); ``syntax`` is a problem between elements (a
    missing or extra comma, text after the array); ``truncated`` an element cut off by the end
    of the file; ``too_large`` an element over the size limit (reading stops); ``unclosed``
    the end of the file before the closing ``]``.
    """

    kind: PieceKind
    offset: int
    """Absolute byte offset of the piece in the file."""
    line: int
    """1-based line where the piece starts."""
    data: bytes = b""
    message: str = ""


class JsonArraySplitter:
    """Split the elements of a top-level JSON array, streaming.

    Args:
        f: the file, positioned just after the opening ``[``.
        offset: the absolute byte offset of that position.
        line: the 1-based line number of that position.
        chunk_size: how many bytes to read at a time.
        max_element_bytes: an element longer than this stops reading (a missing bracket
            would otherwise make the rest of the file one element held in memory).
    """

    def __init__(
        self,
        f: BinaryIO,
        *,
        offset: int,
        line: int,
        chunk_size: int = 1 << 22,
        max_element_bytes: int = 256 << 20,
    ) -> None:
        self._f = f
        self._offset = offset
        self._line = line
        self._chunk_size = chunk_size
        self._max_element = max_element_bytes
        self.position = offset
        """Bytes of the file consumed so far (for progress)."""

    def __iter__(self) -> Iterator[ArrayPiece]:
        f = self._f
        buf = b""
        base = self._offset  # absolute offset of buf[0]
        line = self._line  # line number at buf[line_pos]
        line_pos = 0
        pos = 0  # scan position
        gap_start = 0  # start of the text between the previous token and the next
        elem_start = 0
        depth = 0  # 0: between elements; >0: inside an element
        last = "start"  # what came last at depth 0: "start", "value" or "comma"
        eof = False

        def line_at(p: int) -> int:
            nonlocal line, line_pos
            if p > line_pos:
                line += buf.count(b"\n", line_pos, p)
                line_pos = p
            return line

        while True:
            m = _TOKEN.search(buf, pos)
            if m is None or (buf[m.start()] == _QUOTE and m.end() - m.start() == 1):
                # Out of complete tokens: read more (or handle the end of the file).
                # An unterminated string is scanned again once more data is in.
                pos = m.start() if m is not None else len(buf)
                if depth > 0 and len(buf) - elem_start > self._max_element:
                    yield ArrayPiece(
                        "too_large",
                        base + elem_start,
                        line_at(elem_start),
                        message=f"the element is larger than {self._max_element >> 20} MiB",
                    )
                    return
                if eof:
                    if depth > 0:
                        yield ArrayPiece(
                            "truncated", base + elem_start, line_at(elem_start), buf[elem_start:]
                        )
                    else:
                        pieces, last = self._gap(buf[gap_start:], gap_start, base, last, line_at)
                        yield from pieces
                        yield ArrayPiece("unclosed", base + len(buf), line_at(len(buf)))
                    return
                chunk = f.read(self._chunk_size)
                if not chunk:
                    eof = True
                    continue
                self.position += len(chunk)
                keep = elem_start if depth > 0 else gap_start
                line_at(keep)
                buf = buf[keep:] + chunk
                base += keep
                pos -= keep
                gap_start -= keep
                elem_start -= keep
                line_pos = 0
                continue

            start, end = m.start(), m.end()
            tok = buf[start]
            if depth > 0:
                if tok in _OPEN:
                    depth += 1
                elif tok in _CLOSE:
                    depth -= 1
                    if depth == 0:
                        yield ArrayPiece(
                            "element", base + elem_start, line_at(elem_start), buf[elem_start:end]
                        )
                        last = "value"
                        gap_start = end
                pos = end
                continue

            pieces, last = self._gap(buf[gap_start:start], gap_start, base, last, line_at)
            yield from pieces
            if tok in _OPEN:
                if last == "value":
                    yield self._syntax(base + start, line_at(start), _MISSING_COMMA)
                elem_start = start
                depth = 1
            elif tok == _RBRACKET:
                if last == "comma":
                    yield self._syntax(base + start, line_at(start), _TRAILING_COMMA)
                yield from self._after_end(buf[end:], base + end, line_at(end))
                return
            elif tok == _RBRACE:
                yield self._syntax(base + start, line_at(start), _STRAY_BRACE)
            else:  # a string element at depth 0
                if last == "value":
                    yield self._syntax(base + start, line_at(start), _MISSING_COMMA)
                yield ArrayPiece("scalar", base + start, line_at(start), buf[start:end])
                last = "value"
            gap_start = pos = end

    @staticmethod
    def _syntax(offset: int, line: int, message: str) -> ArrayPiece:
        return ArrayPiece("syntax", offset, line, message=message)

    @staticmethod
    def _gap(
        gap: bytes, rel: int, base: int, last: str, line_at: Callable[[int], int]
    ) -> tuple[list[ArrayPiece], str]:
        """Check the text between two elements: exactly one comma, or bare scalars.

        ``rel`` is the gap's position in the buffer, ``base`` the buffer's file offset.
        """
        if not gap or gap.isspace():
            return [], last
        if last == "value" and gap.strip() == b",":  # the common case, kept cheap
            return [], "comma"
        pieces: list[ArrayPiece] = []
        for i, part in enumerate(gap.split(b",")):
            if i > 0:  # a comma precedes this part
                if last != "value":
                    comma = rel - 1
                    pieces.append(
                        ArrayPiece("syntax", base + comma, line_at(comma), message=_EXTRA_COMMA)
                    )
                last = "comma"
            stripped = part.strip()
            if stripped:
                at = rel + len(part) - len(part.lstrip())
                line = line_at(at)
                if last == "value":
                    pieces.append(ArrayPiece("syntax", base + at, line, message=_MISSING_COMMA))
                pieces.append(ArrayPiece("scalar", base + at, line, stripped))
                last = "value"
            rel += len(part) + 1
        return pieces, last

    def _after_end(self, rest: bytes, offset: int, line: int) -> Iterator[ArrayPiece]:
        """Anything but whitespace after the closing bracket is a syntax problem."""
        while True:
            stripped = rest.lstrip()
            if stripped:
                skipped = len(rest) - len(stripped)
                at_line = line + rest.count(b"\n", 0, skipped)
                yield ArrayPiece(
                    "syntax",
                    offset + skipped,
                    at_line,
                    message="text after the closing ']' of the array",
                )
                return
            line += rest.count(b"\n")
            offset += len(rest)
            rest = self._f.read(self._chunk_size)
            if not rest:
                return
            self.position += len(rest)


_DUMP_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    """What orjson cannot write (bytes from Parquet, decimals, ...) is written as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class AtomicJsonlWriter:
    """Write JSON Lines to ``<dir>/.<name>.<random>.tmp``, renamed to ``path`` on commit.

    Use as a context manager: leaving the block without :meth:`commit` (an exception, a
    cancelled job) deletes the temporary file, so nothing appears under the final name.
    """

    def __init__(self, path: Path, *, buffer_size: int = 1 << 20) -> None:
        self.path = path
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.tmp_path = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=buffer_size)
        self._done = False

    def write(self, obj: Any) -> None:
        """Append one JSON value as one line (orjson: compact, UTF-8, no ASCII escaping)."""
        self._f.write(orjson.dumps(obj, default=_fallback, option=_DUMP_OPTIONS))
        self.count += 1

    def commit(self) -> None:
        """Flush, fsync and rename the temporary file over the final name."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp_path, self.path)
        self._done = True

    def discard(self) -> None:
        """Close and delete the temporary file (no-op after :meth:`commit`)."""
        if self._done:
            return
        self._f.close()
        self.tmp_path.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> AtomicJsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()
