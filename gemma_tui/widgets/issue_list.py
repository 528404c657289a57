"""The list of problems found in a dataset: location + reason; Enter jumps to the row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

if TYPE_CHECKING:
    from pipeline.data.types import Issue

IssueEntry = tuple[int | None, "Issue"]
"""(global record index, or None for a whole-file problem; the issue)."""

MAX_LISTED = 1_000
"""Issues shown in the list; the rest are reached with the next/previous error keys."""


def issue_prompt(index: int | None, issue: Issue, *, show_path: bool = True) -> Text:
    """``✗ #12 line 12 [field]  reason``; the path is left out for a one-file dataset."""
    if show_path:
        where = issue.location()
    else:
        where = f"line {issue.line:,}" if issue.line is not None else ""
        if issue.field:
            where += f" [{issue.field}]"
    style = "red" if issue.severity == "error" else "yellow"
    prompt = Text(no_wrap=True, overflow="ellipsis")
    prompt.append("✗ " if issue.severity == "error" else "! ", style=f"bold {style}")
    if index is not None:
        prompt.append(f"#{index + 1:,} ", style="bold")
    if where:
        prompt.append(where, style="dim")
        prompt.append("  ")
    prompt.append(issue.reason)
    return prompt


class IssueList(OptionList):
    """One option per issue; selecting one posts :class:`IssueList.IssueSelected`."""

    class IssueSelected(Message):
        """The user chose the issue of record ``index`` (global)."""

        def __init__(self, issue_list: IssueList, index: int) -> None:
            super().__init__()
            self.issue_list = issue_list
            self.index = index

        @property
        def control(self) -> IssueList:
            return self.issue_list

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._indices: list[int | None] = []
        self._first_option_of: dict[int, int] = {}

    def show_issues(
        self, entries: Sequence[IssueEntry], *, rows: int, issues: int, show_path: bool = True
    ) -> None:
        """List ``entries`` (at most :data:`MAX_LISTED`); ``rows``/``issues`` are the totals."""
        listed = list(entries[:MAX_LISTED])
        self._indices = [index for index, _ in listed]
        self._first_option_of = {}
        for position, index in enumerate(self._indices):
            if index is not None:
                self._first_option_of.setdefault(index, position)
        self.set_options(
            Option(issue_prompt(index, issue, show_path=show_path)) for index, issue in listed
        )
        if not issues:
            self.border_title = "No issues"
        else:
            title = f"Issues: {issues:,} in {rows:,} row{'s' if rows != 1 else ''}"
            if issues > len(listed):
                title += f" (first {len(listed):,} listed)"
            self.border_title = title

    def highlight_record(self, index: int) -> None:
        """Highlight the first issue of record ``index``, if it is listed."""
        position = self._first_option_of.get(index)
        if position is not None and self.highlighted != position:
            with self.prevent(OptionList.OptionHighlighted):
                self.highlighted = position

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        index = self._indices[event.option_index]
        if index is not None:
            self.post_message(self.IssueSelected(self, index))
