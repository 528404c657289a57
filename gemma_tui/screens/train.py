"""The Train screen (skeleton)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.widgets import Footer, Header, Static

from gemma_tui.screens.job_screen import JobScreen
from gemma_tui.widgets.job_bar import JobBar

if TYPE_CHECKING:
    from textual.app import ComposeResult


class TrainScreen(JobScreen):
    """Set up, start, watch and stop a run in this process."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Train")
        yield JobBar()
        yield Footer()

    def resume_run(self, run_dir: Path) -> None:
        """Resume the stopped run in ``run_dir`` in this process."""
        self.notify(f"resume {run_dir}: not yet")
