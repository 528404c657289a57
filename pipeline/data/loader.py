"""Files -> raw records, streaming: the public entry of the dataset readers.

Contract (docs/data-api.md): :func:`resolve_sources` turns a file, a folder or a glob into a
sorted list of dataset files; :func:`read_records` streams one file as :class:`RawRecord`
values and :class:`~pipeline.data.types.Issue` values; :func:`detect_format` names the format
of a file from its first records' keys.

How each file type is read (memory never grows with the file size) is the business of
:mod:`pipeline.data.readers`, one module per type:

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

The readers, the record types and format detection (:mod:`pipeline.data.formats.detect`) are
re-exported here, so ``from pipeline.data.loader import ...`` keeps working for all of them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.formats.detect import (
    DETECT_ITEMS,
    DETECT_RECORDS,
    FORMAT_HINT,
    format_error,
    guess_format,
)
from pipeline.data.readers import (
    BOM,
    EXTENSIONS,
    BadRecord,
    CsvReader,
    FileReader,
    Item,
    JsonArrayReader,
    JsonlReader,
    ParquetReader,
    RawRecord,
    open_reader,
    unsupported_file_error,
)
from pipeline.data.types import DatasetSpec, FormatName, Issue
from pipeline.errors import DatasetError

# --------------------------------------------------------------------------------- sources


def _supported(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


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
                raise unsupported_file_error(path)
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
                raise unsupported_file_error(matches[0])
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


# --------------------------------------------------------------------------------- records


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
        if len(records) >= DETECT_RECORDS or n >= DETECT_ITEMS:
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


__all__ = [
    "BOM",
    "EXTENSIONS",
    "FORMAT_HINT",
    "BadRecord",
    "CsvReader",
    "FileReader",
    "Item",
    "JsonArrayReader",
    "JsonlReader",
    "ParquetReader",
    "RawRecord",
    "detect_format",
    "format_error",
    "guess_format",
    "open_reader",
    "read_records",
    "resolve_sources",
]
