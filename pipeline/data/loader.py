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
* A folder written by Hugging Face ``datasets``' ``save_to_disk`` (``state.json`` and
  ``*.arrow`` files) is one source, read memory-mapped with ``datasets.load_from_disk`` (the
  library is imported only then); a ``DatasetDict`` folder (``dataset_dict.json``) is one
  source per split, named ``data_dir[train]`` in issues. Like Parquet: an index, no line.

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
    HfDatasetReader,
    Item,
    JsonArrayReader,
    JsonlReader,
    ParquetReader,
    RawRecord,
    hf_dataset_dirs,
    open_reader,
    unsupported_file_error,
)
from pipeline.data.readers.hf_dataset import is_hf_dataset, is_hf_dataset_dict
from pipeline.data.types import DatasetSpec, FormatName, Issue
from pipeline.errors import DatasetError

# --------------------------------------------------------------------------------- sources


def _supported(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def _inside_hf_dataset(path: Path) -> bool:
    """A file of a saved Hugging Face dataset (its ``state.json``, ...), not a dataset file."""
    return is_hf_dataset(path.parent) or is_hf_dataset_dict(path.parent)


def resolve_sources(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Turn a file, a folder, a glob, or a list of those into the dataset files to read.

    A folder written by Hugging Face ``save_to_disk`` is recognised first: a ``Dataset``
    folder is itself one source, a ``DatasetDict`` folder its split folders (in the order of
    ``dataset_dict.json``). Any other folder contributes its ``*.json``, ``*.jsonl``,
    ``*.csv`` and ``*.parquet`` files (not hidden ones, not sub-folders), sorted by name; a
    glob its matching files and saved-dataset folders, sorted, where files of other types are
    skipped as long as one supported source matches. Duplicates are dropped, order is kept.

    Raises:
        DatasetError: a path does not exist, a folder or glob holds no dataset file, a file
            named directly has an unsupported type, or a ``DatasetDict`` folder is incomplete.
    """
    items = [source] if isinstance(source, str | Path) else list(source)
    if not items:
        raise DatasetError("no dataset given", hint="name a file, a folder or a glob")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        hf_dirs = hf_dataset_dirs(path) if path.is_dir() else None
        if hf_dirs is not None:
            found.extend(hf_dirs)
        elif path.is_dir():
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
            picked: list[Path] = []
            for match in matches:
                if match.is_file():
                    if _supported(match) and not _inside_hf_dataset(match):
                        picked.append(match)
                elif match.is_dir():
                    picked.extend(hf_dataset_dirs(match) or ())
            if not picked:
                plain = [m for m in matches if m.is_file()]
                if plain:
                    raise unsupported_file_error(plain[0])
                raise DatasetError(
                    f"the pattern {str(item)!r} matches no file",
                    hint="check the folder and the pattern (quote it so the shell leaves it alone)",
                )
            found.extend(picked)
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
    ``history``). A record that cannot be parsed yields its issues instead of a record. A
    saved Hugging Face ``DatasetDict`` folder streams its splits one after the other.
    """
    for part in _parts(path):
        for item in open_reader(part, spec):
            if isinstance(item, BadRecord):
                yield from item.issues
            else:
                yield item


def _parts(path: Path) -> list[Path]:
    """The sources one path reads as: a ``DatasetDict`` folder's splits, else the path."""
    path = Path(path)
    return (hf_dataset_dirs(path) if path.is_dir() else None) or [path]


# --------------------------------------------------------------------------------- formats


def detect_format(path: Path, spec: DatasetSpec = DatasetSpec()) -> FormatName:  # noqa: B008
    """The format of one file: ``spec.format`` if set, else what its first records look like.

    Raises:
        DatasetError: no record matches a format (the message names the keys found and the
            keys each format expects), or the file has no parseable record at all.
    """
    if spec.format is not None:
        return spec.format
    path = _parts(path)[0]
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
    "HfDatasetReader",
    "Item",
    "JsonArrayReader",
    "JsonlReader",
    "ParquetReader",
    "RawRecord",
    "detect_format",
    "format_error",
    "guess_format",
    "hf_dataset_dirs",
    "open_reader",
    "read_records",
    "resolve_sources",
]
