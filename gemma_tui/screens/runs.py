"""The Runs screen (skeleton; filled in by the Runs work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.widgets import Footer, Header, Static

if TYPE_CHECKING:
    from textual.app import ComposeResult


class RunsScreen(Screen[None]):
    """Every run in the workspace."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Runs")
        yield Footer()
