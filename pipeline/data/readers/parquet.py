"""``.parquet``: read with ``pyarrow.parquet.ParquetFile.iter_batches``.

Nulls are missing values. Parquet records have no line and no byte span, only an index;
:meth:`ParquetReader.read_at` reads the record's row group (and keeps it for the next calls).
pyarrow is imported on use.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.data.readers.base import FileReader
from pipeline.data.readers.records import BadRecord, Item, RawRecord, empty_issue
from pipeline.data.types import DatasetSpec, Issue, RecordRef


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
            yield empty_issue(display, "has no rows")

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
