"""The help screen (F1 or ?): every key of the app and of the current screen.

The lists are built from the ``BINDINGS`` of the app and the screens, so they never drift
from what the keys actually do. A screen adds its own sections with a ``help_sections()``
method returning :data:`HelpSection` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

if TYPE_CHECKING:
    from textual.app import App, ComposeResult

HelpSection = tuple[str, Sequence[tuple[str, str]]]
"""(section title, [(keys as shown, what they do), ...])."""


def describe_bindings(app: App[Any], bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    """(keys, description) for each binding that has a description, keys joined by " / "."""
    rows: list[tuple[str, str]] = []
    for item in bindings:
        if isinstance(item, Binding):
            binding = item
        else:
            key, action, *rest = item
            binding = Binding(key, action, rest[0] if rest else "")
        description = binding.tooltip or binding.description
        if not description:
            continue
        keys = binding.key.split(",")
        shown = [
            app.get_key_display(
                Binding(
                    key.strip(),
                    binding.action,
                    key_display=binding.key_display if len(keys) == 1 else None,
                )
            )
            for key in keys
        ]
        rows.append((" / ".join(shown), description))
    return rows


class HelpScreen(ModalScreen[None]):
    """A modal listing keys by section; Escape, q, F1 or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,f1,question_mark", "close", "Close help"),
    ]

    def __init__(self, sections: Sequence[HelpSection]) -> None:
        super().__init__(classes="modal")
        self.sections = tuple(sections)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Label("Keys", classes="dialog-title")
            with VerticalScroll(id="help-body"), Grid(id="help-grid"):
                for title, rows in self.sections:
                    table = Table.grid(padding=(0, 2))
                    table.add_column(style="bold", min_width=12, no_wrap=True)
                    table.add_column()
                    for keys, description in rows:
                        table.add_row(Text(keys), Text(description))
                    with Vertical(classes="help-block"):
                        yield Label(title, classes="help-section")
                        yield Static(table, classes="help-table")
            yield Label("esc closes this help", classes="dialog-help")

    def action_close(self) -> None:
        self.dismiss(None)
