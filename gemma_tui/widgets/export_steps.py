"""The Export wizard's two displays: the strip of wizard steps, and the export's stage list.

:class:`StepStrip` shows ``1 Source › 2 Settings › 3 Export › 4 Report › 5 Try it``: the
current step highlighted, the steps that cannot be shown yet dimmed; a click on a step posts
:class:`StepStrip.StepChosen`.

:class:`StageList` shows the stages of one export (:func:`export_stages` says which apply to
the chosen options) with their state: pending, running with its elapsed seconds, done with
its seconds and the pipeline's one-line summary, failed, or cancelled. It only holds and
draws what the screen tells it (the events arrive on the UI thread, through the bridge); the
screen calls :meth:`StageList.tick` every second so a running stage's time moves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rich.table import Table
from rich.text import Text
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.app import ComposeResult
    from textual.events import Click

    from pipeline.events import Progress
    from pipeline.export.job import ExportOptions


def stage_label(name: str) -> str | None:
    """What stage ``name`` of an export does; None when it is not a stage of the export
    (a sub-stage, e.g. the loader's "weights", which the log shows)."""
    from pipeline.export.job import STAGE_LABEL

    return STAGE_LABEL.get(name)


def export_stages(options: ExportOptions) -> list[str]:
    """The stages :func:`~pipeline.export.job.export_run` goes through with ``options``."""
    from pipeline.export.job import planned_stages

    return planned_stages(options)


def format_seconds(seconds: float) -> str:
    """``4.2 s``, ``57 s``, ``3 min 05 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


StageState = Literal["pending", "running", "done", "failed", "cancelled", "skipped"]

STATE_MARKS: dict[str, tuple[str, str]] = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "done": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "cancelled": ("■", "yellow"),
    "skipped": ("–", "dim"),
}


@dataclass
class StageRow:
    """One stage as the list shows it."""

    name: str
    state: StageState = "pending"
    started: float | None = None
    """When the stage started (the list's clock), while it runs."""
    seconds: float | None = None
    """How long it took (from the pipeline's StageDone), or ran until it failed."""
    summary: str = ""
    detail: str = ""
    """The StageStarted detail, then the latest progress of the stage."""

    @property
    def label(self) -> str:
        return stage_label(self.name) or self.name


class StepStrip(Horizontal):
    """The wizard's steps in one line; see the module docstring."""

    DEFAULT_CSS = """
    StepStrip { height: 1; padding: 0 1; background: $boost; }
    StepStrip > .step { width: auto; color: $text-muted; padding: 0 1; }
    StepStrip > .step.-available { color: $text; }
    StepStrip > .step.-current { color: $text; background: $primary; text-style: bold; }
    StepStrip > .separator { width: auto; color: $text-muted; }
    """

    class StepChosen(Message):
        """The user clicked a step."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, titles: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.titles = tuple(titles)

    def compose(self) -> ComposeResult:
        for index, title in enumerate(self.titles):
            if index:
                yield Static("›", classes="separator")
            yield Static(f"{index + 1} {title}", classes="step", id=f"step-tab-{index}")

    def show(self, current: int, available: Sequence[bool]) -> None:
        """Highlight step ``current``; dim those not ``available``."""
        for index, _ in enumerate(self.titles):
            tab = self.query_one(f"#step-tab-{index}", Static)
            tab.set_class(index == current, "-current")
            tab.set_class(bool(available[index]), "-available")

    def on_click(self, event: Click) -> None:
        widget = event.widget
        if widget is not None and widget.id and widget.id.startswith("step-tab-"):
            self.post_message(self.StepChosen(int(widget.id.removeprefix("step-tab-"))))


class StageList(Static):
    """The stages of one export and their state; see the module docstring."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.rows: dict[str, StageRow] = {}

    # ---- what the screen tells it

    def plan(self, names: Sequence[str]) -> None:
        """Start again with ``names`` pending."""
        self.rows = {name: StageRow(name) for name in names}
        self.redraw()

    def add(self, name: str) -> None:
        """Show one more stage (pending) at the top, e.g. creating the environment."""
        self.rows = {name: StageRow(name), **self.rows}
        self.redraw()

    def start(self, name: str, detail: str = "") -> bool:
        """Mark ``name`` running (False: not a stage of this list). A stage of the export
        (``pipeline.export.job.STAGE_LABEL``) that the plan left out joins the list before
        the first pending one: the list follows the pipeline even where the plan is out of
        date."""
        row = self.rows.get(name)
        if row is None and stage_label(name) is not None:
            row = StageRow(name)
            rows = list(self.rows.items())
            at = next((i for i, (_, r) in enumerate(rows) if r.state == "pending"), len(rows))
            self.rows = dict([*rows[:at], (name, row), *rows[at:]])
        if row is None:
            return False
        row.state, row.started, row.detail, row.seconds = "running", self.clock(), detail, None
        self.redraw()
        return True

    def progress(self, progress: Progress) -> None:
        """A progress report: the running stage it names (or the running one) shows it."""
        row = self.rows.get(progress.stage)
        if row is None or row.state != "running":
            row = self.running
            if row is None:
                return
        if progress.unit == "s" and progress.stage == row.name:
            # the worker's own count of a long stage's seconds (it may have started before
            # this list heard of it)
            if row.started is not None:
                row.started = min(row.started, self.clock() - progress.done)
        elif progress.total:
            row.detail = f"{progress.stage} {progress.done:,}/{progress.total:,} {progress.unit}"
        else:
            row.detail = f"{progress.stage} {progress.done:,} {progress.unit}"
        self.redraw()

    def done(self, name: str, summary: str, seconds: float) -> bool:
        """Mark ``name`` done (False: not a stage of this list)."""
        row = self.rows.get(name)
        if row is None:
            return False
        row.state, row.summary, row.seconds, row.started = "done", summary, seconds, None
        self.redraw()
        return True

    def stop_running(self, state: Literal["failed", "cancelled"], summary: str = "") -> None:
        """The job ended while a stage ran: mark it failed or cancelled."""
        row = self.running
        if row is None:
            return
        if row.started is not None:
            row.seconds = self.clock() - row.started
        row.state, row.started = state, None
        row.summary = summary or row.detail
        self.redraw()

    def finish(self) -> None:
        """The job succeeded: stages that never ran were not needed."""
        for row in self.rows.values():
            if row.state == "pending":
                row.state = "skipped"
        self.redraw()

    @property
    def running(self) -> StageRow | None:
        return next((row for row in self.rows.values() if row.state == "running"), None)

    def states(self) -> dict[str, str]:
        """Stage name -> state (for tests and the screen's status line)."""
        return {name: row.state for name, row in self.rows.items()}

    def tick(self) -> None:
        """Redraw a running stage's elapsed time."""
        if self.running is not None:
            self.redraw()

    # ---- drawing

    def redraw(self) -> None:
        self.update(self.table())

    def table(self) -> Table:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1, no_wrap=True)
        table.add_column(min_width=27, no_wrap=True)
        table.add_column(width=10, justify="right", no_wrap=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        now = self.clock()
        for row in self.rows.values():
            mark, style = STATE_MARKS[row.state]
            if row.state == "running" and row.started is not None:
                seconds = Text(f"{int(now - row.started)} s…", style="cyan")
                note = Text(row.detail or "running", style="cyan")
            elif row.seconds is not None:
                seconds = Text(format_seconds(row.seconds))
                note = Text(row.summary, style="red" if row.state == "failed" else "dim")
            else:
                seconds = Text("")
                note = Text(row.state if row.state != "pending" else "", style="dim")
            label_style = "dim" if row.state == "pending" else ""
            table.add_row(Text(mark, style=style), Text(row.label, label_style), seconds, note)
        return table
