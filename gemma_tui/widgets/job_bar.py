"""A one-line bar for the running job: what it does, a progress bar, how to cancel it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.events import Progress


def _amount(value: int, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1_000_000:,.1f} MB"
    return f"{value:,} {unit}"


def describe_progress(progress: Progress) -> str:
    """``"validate 12,000 / 300,000 rows"``; the total is left out when unknown."""
    done = _amount(progress.done, progress.unit)
    if progress.total is None:
        return f"{progress.stage} {done}"
    if progress.unit == "bytes":
        return f"{progress.stage} {done} / {_amount(progress.total, 'bytes')}"
    return f"{progress.stage} {progress.done:,} / {progress.total:,} {progress.unit}"


class JobBar(Horizontal):
    """Shown while a job runs (CSS class ``-active``); hidden otherwise."""

    DEFAULT_CSS = """
    JobBar {
        height: 1;
        display: none;
        background: $boost;
        padding: 0 1;
    }
    JobBar.-active { display: block; }
    JobBar > #job-title { width: auto; color: $text-accent; text-style: bold; margin-right: 1; }
    JobBar > ProgressBar { width: 40; }
    JobBar > #job-detail { width: 1fr; color: $text-muted; margin-left: 1; }
    JobBar > #job-hint { width: auto; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Label(id="job-title")
        yield ProgressBar(total=None, show_eta=False, id="job-progress")
        yield Label(id="job-detail")
        yield Label("esc cancel", id="job-hint")

    @property
    def active(self) -> bool:
        return self.has_class("-active")

    def start(self, title: str, detail: str = "", *, hint: str = "esc cancel") -> None:
        """Show the bar for a new job, with an indeterminate bar until progress arrives."""
        self.query_one("#job-hint", Label).update(hint)
        self.query_one("#job-title", Label).update(title)
        self.query_one("#job-detail", Label).update(detail)
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.add_class("-active")

    def show_progress(self, progress: Progress) -> None:
        bar = self.query_one(ProgressBar)
        if progress.total:
            bar.update(total=progress.total, progress=progress.done)
        else:
            bar.update(total=None)
        self.query_one("#job-detail", Label).update(describe_progress(progress))

    def show_detail(self, detail: str) -> None:
        self.query_one("#job-detail", Label).update(detail)

    def stop(self) -> None:
        self.remove_class("-active")
