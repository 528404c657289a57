"""File readers: one module per file type, and :func:`open_reader` to pick one.

Every reader streams one file (memory never grows with the file size) as :data:`Item` values:
:class:`RawRecord`, :class:`BadRecord` (with the original text) and whole-file issues.

* ``.jsonl``: :mod:`~pipeline.data.readers.jsonl`
* ``.json`` (one top-level array): :mod:`~pipeline.data.readers.json_array`
* ``.csv``: :mod:`~pipeline.data.readers.csv_file`
* ``.parquet``: :mod:`~pipeline.data.readers.parquet`
* a folder written by Hugging Face ``datasets``' ``save_to_disk``:
  :mod:`~pipeline.data.readers.hf_dataset` (``datasets`` is imported only then)

The shared parts: :mod:`~pipeline.data.readers.records` (what readers yield),
:mod:`~pipeline.data.readers.json_object` (one JSON record and its errors) and
:mod:`~pipeline.data.readers.base` (:class:`FileReader`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.readers.base import BOM, FileReader
from pipeline.data.readers.csv_file import CsvReader
from pipeline.data.readers.hf_dataset import (
    HfDatasetReader,
    hf_dataset_dirs,
    is_hf_dataset,
    is_hf_dataset_dict,
)
from pipeline.data.readers.json_array import JsonArrayReader
from pipeline.data.readers.jsonl import JsonlReader
from pipeline.data.readers.parquet import ParquetReader
from pipeline.data.readers.records import BadRecord, Item, RawRecord
from pipeline.data.types import DatasetSpec
from pipeline.errors import DatasetError

EXTENSIONS: tuple[str, ...] = (".json", ".jsonl", ".csv", ".parquet")
"""File types a dataset can be made of (case-insensitive)."""


def unsupported_file_error(path: Path) -> DatasetError:
    """The error for a dataset file whose type no reader handles."""
    return DatasetError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}",
        hint="a dataset file must end in .json, .jsonl, .csv or .parquet; rename or convert it",
    )


def open_reader(path: Path, spec: DatasetSpec | None = None) -> FileReader:
    """The reader for one dataset file, chosen by its extension, or for one saved Hugging
    Face ``Dataset`` folder (a ``DatasetDict`` folder is several: see ``hf_dataset_dirs``)."""
    if path.is_dir():
        if is_hf_dataset(path):
            return HfDatasetReader(path, spec)
        if is_hf_dataset_dict(path):
            raise DatasetError(
                f"{path} is a saved DatasetDict: one reader per split",
                hint="read it through resolve_sources or read_records, or name one split folder",
            )
        raise DatasetError(
            f"{path} is a folder, not a dataset file",
            hint="name its files, or pass the folder where a source is expected",
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return JsonlReader(path, spec)
    if suffix == ".json":
        return JsonArrayReader(path, spec)
    if suffix == ".csv":
        return CsvReader(path, spec)
    if suffix == ".parquet":
        return ParquetReader(path, spec)
    raise unsupported_file_error(path)


__all__ = [
    "BOM",
    "EXTENSIONS",
    "BadRecord",
    "CsvReader",
    "FileReader",
    "HfDatasetReader",
    "Item",
    "JsonArrayReader",
    "JsonlReader",
    "ParquetReader",
    "RawRecord",
    "hf_dataset_dirs",
    "open_reader",
    "unsupported_file_error",
]
