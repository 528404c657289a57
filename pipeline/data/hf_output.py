"""Rows -> a saved Hugging Face dataset folder, written atomically.

:class:`HfDatasetWriter` takes ShareGPT rows (what
:func:`~pipeline.data.formats.output.conversation_to_sharegpt` makes: ``conversations`` as a
list of ``{from, value}``, optional ``tools`` and ``id`` strings) and writes what
``datasets.load_from_disk`` reads: a ``Dataset`` folder, or with ``splits`` a ``DatasetDict``
folder with one ``Dataset`` per split. A system prompt stays the first ``{"from": "system"}``
turn, as in the JSONL output; the ``tools`` and ``id`` columns are there only when some row has
them (nulls in the other rows).

How, without holding the rows in memory: rows are appended in batches to one Arrow stream file
per split in a staging folder beside the target; on :meth:`~HfDatasetWriter.commit` each is
opened memory-mapped (``Dataset.from_file``) and ``save_to_disk`` writes the dataset into a
temporary folder beside the target, which is then renamed to the target (an existing saved
dataset there is moved aside first and deleted after). A failure or a cancel before that
leaves nothing under the target's name. An existing target that is a file or a folder holding
anything but a saved dataset is refused (:func:`check_hf_target`), as is a target that is an
input or holds one (:func:`refuse_replacing_inputs`).

``datasets`` is imported (offline) when a writer is made, not when this module is.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.data.readers.hf_dataset import (
    is_hf_dataset,
    is_hf_dataset_dict,
    quiet_datasets,
)
from pipeline.errors import DatasetError

OPTIONAL_COLUMNS = ("tools", "id")
"""Columns written only when at least one row has them."""
_SINGLE = ""
"""The staging name of the one split of a plain ``Dataset``."""


def check_hf_target(target: Path) -> None:
    """DatasetError unless ``target`` may be (re)written as a saved dataset folder: it does
    not exist, or it is an empty folder or a saved ``Dataset``/``DatasetDict``."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink():
        if is_hf_dataset(target) or is_hf_dataset_dict(target) or not any(target.iterdir()):
            return
        raise DatasetError(
            f"{target} is a folder that holds other files, not a saved dataset; writing the "
            "dataset there would delete them",
            hint="name a new folder (it is created), or an earlier output of this command",
        )
    raise DatasetError(
        f"{target} exists and is not a folder; a Hugging Face dataset is written as a folder",
        hint="name a new folder (it is created)",
    )


def refuse_replacing_inputs(inputs: Sequence[Path], target: Path) -> None:
    """DatasetError when writing the folder ``target`` would replace an input: it is one of
    the inputs (a file or a saved dataset folder) or a folder that holds one."""
    out = target.resolve()
    for path in inputs:
        src = path.resolve()
        if out == src or out in src.parents:
            raise DatasetError(
                f"Refusing to write {target}: it is, or holds, the input {path}",
                hint="write the dataset to a new folder that is not an input",
            )


def _features(datasets: Any) -> Any:
    string = datasets.Value("string")
    return datasets.Features(
        {
            "conversations": [{"from": string, "value": string}],
            "tools": string,
            "id": string,
        }
    )


class HfDatasetWriter:
    """Write ShareGPT rows as a saved ``Dataset`` (``splits=None``) or ``DatasetDict``.

    Use as a context manager, like :class:`~pipeline.data.jsonio.AtomicJsonlWriter`: leaving
    the block without :meth:`commit` deletes everything written so far.

    Raises:
        DatasetError: the target exists and is not a saved dataset or an empty folder.
    """

    def __init__(
        self, path: Path, splits: Sequence[str] | None = None, *, batch_size: int = 1000
    ) -> None:
        import pyarrow as pa

        self.path = Path(path)
        check_hf_target(self.path)
        self.splits = tuple(splits) if splits is not None else None
        if self.splits is not None and (
            len(set(self.splits)) != len(self.splits)
            or not all(s and "/" not in s and not s.startswith(".") for s in self.splits)
        ):
            raise DatasetError(f"bad split names {self.splits!r}", hint="use distinct plain names")
        names = self.splits if self.splits is not None else (_SINGLE,)
        self.count = 0
        self.counts: dict[str, int] = dict.fromkeys(names, 0)
        self._batch_size = batch_size
        self._seen: set[str] = set()
        self._done = False
        with quiet_datasets() as datasets:
            self._schema = _features(datasets).arrow_schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(
            tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".staging")
        )
        self._rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        self._sinks: dict[str, Any] = {}
        self._writers: dict[str, Any] = {}
        for name in names:
            sink = pa.OSFile(str(self._arrow(name)), "wb")
            self._sinks[name] = sink
            self._writers[name] = pa.ipc.new_stream(sink, self._schema)

    def _arrow(self, name: str) -> Path:
        return self._staging / f"{name or 'data'}.arrow"

    def write(self, row: dict[str, Any], split: str | None = None) -> None:
        """Append one ShareGPT row to ``split`` (None for a plain ``Dataset``)."""
        name = _SINGLE if split is None else split
        rows = self._rows.get(name)
        if rows is None or (split is None) != (self.splits is None):
            raise ValueError(f"no split {split!r} in this writer (splits: {self.splits})")
        rows.append(row)
        for column in OPTIONAL_COLUMNS:
            if row.get(column) is not None:
                self._seen.add(column)
        self.counts[name] += 1
        self.count += 1
        if len(rows) >= self._batch_size:
            self._flush(name)

    def _flush(self, name: str) -> None:
        import pyarrow as pa

        rows = self._rows[name]
        if rows:
            self._writers[name].write_table(pa.Table.from_pylist(rows, schema=self._schema))
            rows.clear()

    def _close_streams(self) -> None:
        for name, writer in list(self._writers.items()):
            writer.close()
            self._sinks[name].close()
        self._writers.clear()
        self._sinks.clear()

    def commit(self) -> None:
        """Save the dataset into a temporary folder, then rename it to the target."""
        for name in self._rows:
            self._flush(name)
        self._close_streams()
        unused = [c for c in OPTIONAL_COLUMNS if c not in self._seen]
        tmp = Path(
            tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        )
        try:
            with quiet_datasets() as datasets:
                parts = {}
                for name in self._rows:
                    part = datasets.Dataset.from_file(str(self._arrow(name)))
                    parts[name] = part.remove_columns(unused) if unused else part
                # An empty part must still get one (empty) Arrow file: saved without any,
                # load_from_disk cannot open it.
                shards = {name: 1 if len(part) == 0 else None for name, part in parts.items()}
                if self.splits is None:
                    parts[_SINGLE].save_to_disk(str(tmp), num_shards=shards[_SINGLE])
                else:
                    datasets.DatasetDict(parts).save_to_disk(str(tmp), num_shards=shards)
                del parts
            self._replace_target(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._done = True

    def _replace_target(self, tmp: Path) -> None:
        check_hf_target(self.path)  # it may have changed while the rows were written
        if not self.path.exists():
            os.rename(tmp, self.path)
            return
        old = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.old")
        os.rename(self.path, old)
        try:
            os.rename(tmp, self.path)
        except BaseException:
            os.rename(old, self.path)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Close and delete what was written (no-op after :meth:`commit`)."""
        if self._done:
            return
        self._close_streams()
        shutil.rmtree(self._staging, ignore_errors=True)
        self._done = True

    def __enter__(self) -> HfDatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


__all__ = [
    "OPTIONAL_COLUMNS",
    "HfDatasetWriter",
    "check_hf_target",
    "refuse_replacing_inputs",
]
