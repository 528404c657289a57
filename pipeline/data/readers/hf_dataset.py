"""A folder written by Hugging Face ``datasets``' ``save_to_disk``: a ``Dataset`` or a split.

A saved ``Dataset`` is a folder with ``state.json``, ``dataset_info.json`` and ``*.arrow``
files; a saved ``DatasetDict`` is a folder with ``dataset_dict.json`` (the split names) and one
such folder per split. :func:`hf_dataset_dirs` recognises both by their file names alone (no
import); :class:`HfDatasetReader` reads one ``Dataset`` folder with
``datasets.load_from_disk``, memory-mapped (the table is never loaded into RAM), in batches of
Arrow rows. Nulls are missing values, as in Parquet; records have an index and no line.

The split of a ``DatasetDict`` is named in the path shown in issues: ``data_dir[train]``.

``datasets`` takes seconds to import, so it is imported only when such a folder is read
(:func:`import_datasets`), never on the start-up path or for plain files. It is told to stay
offline (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, unless the user set them), and its
progress bars are silenced while we use it (:func:`quiet_datasets`): they would draw over the
TUI.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.data.readers.base import FileReader
from pipeline.data.readers.records import BadRecord, Item, RawRecord
from pipeline.data.types import DatasetSpec, Issue, RecordRef
from pipeline.errors import DatasetError

STATE_FILE = "state.json"
"""Written by ``Dataset.save_to_disk`` (with ``dataset_info.json`` and the ``*.arrow`` files)."""
DICT_FILE = "dataset_dict.json"
"""Written by ``DatasetDict.save_to_disk``: ``{"splits": [...]}``, one sub-folder per split."""
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


# --------------------------------------------------------------------------- the library


def import_datasets() -> ModuleType:
    """``import datasets``, offline: the variables in :data:`OFFLINE_VARIABLES` are set to 1
    first unless the user set them (they are read when ``datasets`` is first imported)."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")
    import datasets

    return datasets


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_restore = False


@contextmanager
def quiet_datasets() -> Iterator[ModuleType]:
    """``datasets`` (imported offline) with its tqdm progress bars off for the block; they are
    switched back on when the last block ends, if they were on before."""
    global _quiet_users, _quiet_restore
    datasets = import_datasets()
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_restore = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()
        _quiet_users += 1
    try:
        yield datasets
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0 and _quiet_restore:
                datasets.enable_progress_bars()


# --------------------------------------------------------------------------- recognising


def is_hf_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk``."""
    return (path / STATE_FILE).is_file()


def is_hf_dataset_dict(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``DatasetDict.save_to_disk``."""
    return (path / DICT_FILE).is_file()


def _dict_splits(path: Path) -> list[str]:
    """The split names listed in ``path/dataset_dict.json``."""
    try:
        splits = json.loads((path / DICT_FILE).read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(
            f"{path / DICT_FILE} cannot be read as a DatasetDict index ({err})",
            hint='it must hold {"splits": [...]}; save the DatasetDict again with save_to_disk',
        ) from err
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DatasetError(
            f"{path / DICT_FILE}: 'splits' is not a list of split names",
            hint="save the DatasetDict again with save_to_disk",
        )
    return splits


def hf_dataset_dirs(path: Path) -> list[Path] | None:
    """The ``Dataset`` folders that the folder ``path`` stands for, or None when it is no
    saved Hugging Face dataset: itself for a ``Dataset``, its split folders (in the order of
    ``dataset_dict.json``) for a ``DatasetDict``.

    Raises:
        DatasetError: a ``DatasetDict`` whose index is unreadable or names a split folder that
            is not a saved ``Dataset``.
    """
    if is_hf_dataset(path):
        return [path]
    if not is_hf_dataset_dict(path):
        return None
    dirs: list[Path] = []
    for split in _dict_splits(path):
        sub = path / split
        if not is_hf_dataset(sub):
            raise DatasetError(
                f"{path} is a DatasetDict, but its split {split!r} has no {sub.name}/{STATE_FILE}",
                hint="the folder looks incomplete; save the DatasetDict again with save_to_disk",
            )
        dirs.append(sub)
    if not dirs:
        raise DatasetError(f"the DatasetDict {path} has no splits", hint="add a split or leave it")
    return dirs


def hf_display(path: Path) -> str:
    """How a ``Dataset`` folder is named in issues: ``data_dir[train]`` for the split of a
    ``DatasetDict``, else the folder as given."""
    parent = path.parent
    if path.name and is_hf_dataset_dict(parent):
        try:
            splits = _dict_splits(parent)
        except DatasetError:
            splits = []
        if path.name in splits:
            return f"{parent}[{path.name}]"
    return str(path)


# --------------------------------------------------------------------------- the reader


class HfDatasetReader(FileReader):
    """One saved ``Dataset`` folder through ``datasets.load_from_disk``, memory-mapped, in
    Arrow batches; nulls are missing values. ``size`` is the bytes of its ``*.arrow`` files."""

    batch_size = 1024

    def __init__(self, path: Path, spec: DatasetSpec | None = None) -> None:
        super().__init__(path, spec)
        self.display = hf_display(path)
        self.size = sum(p.stat().st_size for p in path.glob("*.arrow") if p.is_file())
        self._dataset: Any = None  # datasets.Dataset (memory-mapped), kept for read_at

    def _open(self) -> Any:
        if self._dataset is None:
            with quiet_datasets() as datasets:
                dataset = datasets.load_from_disk(str(self.path), keep_in_memory=False)
            if not isinstance(dataset, datasets.Dataset):
                raise ValueError("it holds a DatasetDict, not one Dataset")
            self._dataset = dataset.with_format("arrow")
        return self._dataset

    def _bad(self, reason: str) -> Issue:
        return Issue(self.display, None, None, "", reason, "bad_hf_dataset")

    def _empty(self) -> Issue:
        return Issue(
            self.display,
            None,
            None,
            "",
            "the dataset has no rows, so it has no records; add records or leave it out",
            "empty_file",
        )

    def _saved_without_data(self) -> bool:
        """An empty ``Dataset`` saved with no Arrow file at all (``_data_files: []``), which
        ``load_from_disk`` cannot open."""
        try:
            state = json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # load_from_disk will say what is wrong
        return isinstance(state, dict) and state.get("_data_files") == []

    def __iter__(self) -> Iterator[Item]:
        import pyarrow as pa

        damaged = (pa.ArrowException, OSError, ValueError, KeyError, TypeError)
        if self._saved_without_data():
            yield self._empty()
            return
        try:
            dataset = self._open()
        except damaged as err:
            yield self._bad(
                f"the folder is not a readable saved Hugging Face dataset ({err}); save it "
                "again with save_to_disk"
            )
            return
        total = len(dataset)
        display = self.display
        index = 0
        try:
            for table in dataset.iter(batch_size=self.batch_size):
                for row in table.to_pylist():
                    data = {k: v for k, v in row.items() if v is not None}
                    yield RawRecord(RecordRef(display, index, None), data, None)
                    index += 1
                self.position = self.size * index // max(total, 1)
        except damaged as err:
            yield self._bad(
                f"reading stopped at record {index}: the Arrow data is damaged ({err}); "
                "save the dataset again"
            )
            return
        if index == 0:
            yield self._empty()

    def read_at(self, ref: RecordRef, span: tuple[int, int] | None) -> RawRecord | BadRecord:
        """Row ``ref.index``, sliced from the memory-mapped table."""
        dataset = self._open()
        if not 0 <= ref.index < len(dataset):
            raise IndexError(f"{self.display} has no record {ref.index}")
        row = dataset[ref.index : ref.index + 1].to_pylist()[0]
        return RawRecord(ref, {k: v for k, v in row.items() if v is not None}, None)


__all__ = [
    "DICT_FILE",
    "OFFLINE_VARIABLES",
    "STATE_FILE",
    "HfDatasetReader",
    "hf_dataset_dirs",
    "hf_display",
    "import_datasets",
    "is_hf_dataset",
    "is_hf_dataset_dict",
    "quiet_datasets",
]
