"""A windowed table of dataset records.

A dataset can hold millions of records, far more than a ``DataTable`` should own. This table
holds one *window*: up to :data:`WINDOW_SIZE` consecutive records starting at
``window_start``. Moving the cursor past either edge of the window, paging past it, or
jumping to a record outside it does not move the cursor: it posts
:class:`RecordTable.WindowRequested` with the wanted window and record; the screen reads
those records in a worker and calls :meth:`RecordTable.show_window`.

Indices in this widget's API are *global* record indices (0-based, across all files);
the ``DataTable`` underneath uses row numbers within the window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

if TYPE_CHECKING:
    from pipeline.data.validate import CheckedRecord

WINDOW_SIZE = 200
"""Records held in the table at a time."""

PREVIEW_CHARS = 60
INVALID_STYLE = "red"


def window_start_for(index: int, total: int, size: int = WINDOW_SIZE) -> int:
    """The start of a window of ``size`` records that shows ``index`` near its middle."""
    start = max(0, index - size // 2)
    return max(0, min(start, total - size))


def _one_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def record_preview(record: CheckedRecord) -> str:
    """The first user text of a valid record; the start of the raw row of an invalid one."""
    conversation = record.conversation
    if conversation is not None and conversation.turns:
        for turn in conversation.turns:
            if turn.role == "user":
                return _one_line(turn.text)
        return _one_line(conversation.turns[0].text)
    if record.record is not None:
        try:
            return _one_line(json.dumps(record.record.data, ensure_ascii=False, default=str))
        except (TypeError, ValueError):
            return _one_line(repr(record.record.data))
    return _one_line(record.raw or "")


def record_status(record: CheckedRecord) -> str:
    errors = [issue for issue in record.issues if issue.severity == "error"]
    if not errors and record.conversation is not None:
        warnings = len(record.issues)
        return "ok" if not warnings else f"ok ({warnings} warning{'s' if warnings > 1 else ''})"
    first = errors[0].code if errors else "invalid"
    more = f" +{len(errors) - 1}" if len(errors) > 1 else ""
    return f"✗ {first}{more}"


def is_invalid(record: CheckedRecord) -> bool:
    return record.conversation is None or any(i.severity == "error" for i in record.issues)


class RecordTable(DataTable[Text]):
    """Records ``window_start .. window_start + len(window)`` of ``total``; invalid ones red."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+home,g", "first_record", "First record", show=False),
        Binding("ctrl+end,G", "last_record", "Last record", show=False),
    ]

    class RecordHighlighted(Message):
        """The cursor is on record ``index`` (global)."""

        def __init__(self, table: RecordTable, index: int, record: CheckedRecord) -> None:
            super().__init__()
            self.table = table
            self.index = index
            self.record = record

        @property
        def control(self) -> RecordTable:
            return self.table

    class WindowRequested(Message):
        """The cursor should go to record ``index``, which is outside the loaded window."""

        def __init__(self, table: RecordTable, start: int, index: int) -> None:
            super().__init__()
            self.table = table
            self.start = start
            self.index = index

        @property
        def control(self) -> RecordTable:
            return self.table

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id,
            classes=classes,
            cursor_type="row",
            zebra_stripes=True,
            cursor_foreground_priority="renderable",
        )
        self.window_start = 0
        self.total = 0
        self.window_size = WINDOW_SIZE
        self._records: list[CheckedRecord] = []
        self._pending_index: int | None = None

    def on_mount(self) -> None:
        self.add_column("#", key="index")
        self.add_column("line", key="line")
        self.add_column("status", key="status")
        self.add_column("turns", key="turns")
        self.add_column("preview", key="preview")

    # ---- window

    @property
    def window_end(self) -> int:
        """One past the last global index in the window."""
        return self.window_start + len(self._records)

    @property
    def cursor_index(self) -> int | None:
        """Global index of the record under the cursor (None when the table is empty)."""
        if not self._records:
            return None
        return self.window_start + self.cursor_row

    @property
    def pending_index(self) -> int | None:
        """The record asked for by the last ``WindowRequested`` not yet shown."""
        return self._pending_index

    def record_at(self, index: int) -> CheckedRecord | None:
        if self.window_start <= index < self.window_end:
            return self._records[index - self.window_start]
        return None

    def show_window(
        self, start: int, records: Sequence[CheckedRecord], total: int, index: int
    ) -> None:
        """Show ``records`` (global indices ``start ..``) and put the cursor on ``index``."""
        self.total = total
        self.window_start = start
        self._records = list(records)
        self._pending_index = None
        self.clear()
        self.add_rows(
            self._row(start + offset, record) for offset, record in enumerate(self._records)
        )
        self._update_title()
        if not self._records:
            return
        row = min(max(index - start, 0), len(self._records) - 1)
        self.move_cursor(row=row, animate=False)
        # The cursor may not have moved (same row number as before), so say where it is.
        self.post_message(self.RecordHighlighted(self, start + row, self._records[row]))

    def reset(self) -> None:
        self.total = 0
        self.window_start = 0
        self._records = []
        self._pending_index = None
        self.clear()
        self._update_title()

    def go_to(self, index: int) -> None:
        """Move the cursor to global ``index``, asking for its window if it is not loaded."""
        if self.total == 0:
            return
        index = min(max(index, 0), self.total - 1)
        if self.window_start <= index < self.window_end:
            self._pending_index = None
            self.move_cursor(row=index - self.window_start, animate=False)
            return
        self._pending_index = index
        self.post_message(
            self.WindowRequested(self, window_start_for(index, self.total, self.window_size), index)
        )

    def _update_title(self) -> None:
        if not self.total:
            self.border_title = "No records"
        else:
            self.border_title = (
                f"Rows {self.window_start + 1:,}-{self.window_end:,} of {self.total:,}"
            )

    def _row(self, index: int, record: CheckedRecord) -> list[Text]:
        style = INVALID_STYLE if is_invalid(record) else ""
        line = "" if record.ref.line is None else f"{record.ref.line:,}"
        turns = "" if record.conversation is None else str(len(record.conversation.turns))
        cells = (f"{index + 1:,}", line, record_status(record), turns, record_preview(record))
        return [Text(cell, style=style, no_wrap=True, overflow="ellipsis") for cell in cells]

    # ---- events

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        row = event.cursor_row
        if 0 <= row < len(self._records):
            self.post_message(
                self.RecordHighlighted(self, self.window_start + row, self._records[row])
            )

    # ---- navigation that crosses the window's edges

    def _at_edge_move(self, delta: int) -> bool:
        """Ask for the next window when the cursor would leave this one; True if it did."""
        index = self.cursor_index
        if index is None:
            return True
        target = index + delta
        if self.window_start <= target < self.window_end:
            return False
        if 0 <= target < self.total:
            self.go_to(target)
        return True

    def action_cursor_down(self) -> None:
        if not self._at_edge_move(1):
            super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if not self._at_edge_move(-1):
            super().action_cursor_up()

    def _page_rows(self) -> int:
        return max(
            1,
            self.scrollable_content_region.height - (self.header_height if self.show_header else 0),
        )

    def action_page_down(self) -> None:
        index = self.cursor_index
        if index is None:
            return
        if index + self._page_rows() >= self.window_end and self.window_end < self.total:
            self.go_to(index + self._page_rows())
        else:
            super().action_page_down()

    def action_page_up(self) -> None:
        index = self.cursor_index
        if index is None:
            return
        if index - self._page_rows() < self.window_start and self.window_start > 0:
            self.go_to(index - self._page_rows())
        else:
            super().action_page_up()

    def action_first_record(self) -> None:
        self.go_to(0)

    def action_last_record(self) -> None:
        self.go_to(self.total - 1)
