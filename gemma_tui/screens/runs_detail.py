"""One run in detail (its curves, status, checkpoints, profile, log) and several runs compared.

A run may be written right now by another process (``gemma-tui train`` under tmux, a detached
run, or this TUI's Train screen): both screens follow its files read-only, never taking its
lock, through :class:`~gemma_tui.screens.runs_files.RunFiles`; they poll every
:data:`POLL_SECONDS` and read ``run.json`` every :data:`STATUS_EVERY_POLLS`-th poll.

The first read (possibly a long history, and the checkpoint check, which imports numpy) runs
in a thread; the polls that follow read only what is new, on the UI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Log, Static

from gemma_tui.cli_train import format_age, format_duration
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.runs_actions import RunActions, loss_text, status_text, steps_text
from gemma_tui.screens.runs_files import (
    CheckpointRow,
    RunFiles,
    checkpoints_signature,
    format_bytes,
    list_checkpoint_rows,
    read_profile_text,
)
from gemma_tui.widgets.run_plots import (
    LossPlot,
    MemoryPlot,
    RunHistory,
    device_readings,
    rich_colour,
    run_colour,
)
from pipeline.training.runs import LOG_TXT, PROFILE_TOML, summarize_run

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.training.runs import RunSummary


CSS_PATH = Path(__file__).with_name("runs.tcss")
POLL_SECONDS = 0.5
STATUS_EVERY_POLLS = 4
"""run.json (and whether its process lives) is read every 4th poll: every 2 s."""
LOG_MAX_LINES = 2000


# --------------------------------------------------------------------------- status line


def summary_line(summary: RunSummary, history: RunHistory) -> Text:
    """``run · status · step 120/500 · last loss · best eval · tok/s · started · duration``."""
    text = Text(summary.name, style="bold")
    text.append(" · ").append_text(status_text(summary))
    step = summary.step
    last = history.last_train
    if last is not None and isinstance(last.get("step"), int) and last["step"] > step:
        step = last["step"]  # metrics run ahead of run.json between its writes
    total = summary.total_steps
    text.append(f" · step {step:,}/{total:,}" if total else f" · step {step:,}")
    loss = last.get("loss") if last is not None else None
    if isinstance(loss, int | float):
        text.append(f" · loss {loss:.4f}")
    best = history.best_eval if history.best_eval is not None else summary.best_eval_loss
    text.append(f" · best eval {loss_text(best)}")
    speed = last.get("tokens_per_s") if last is not None else None
    if isinstance(speed, int | float):
        text.append(f" · {speed:,.0f} tok/s")
    details = [
        f"started {format_age(summary.age_s)}",
        f"took {format_duration(summary.duration_s)}",
        f"profile {summary.profile or '-'}",
        f"model {summary.model or '-'}",
    ]
    devices = device_readings(last.get("devices")) if last is not None else []
    if len(devices) > 1:
        details.append(f"{len(devices)} devices ({', '.join(d['device'] for d in devices)})")
    text.append("\n" + " · ".join(details), style="dim")
    if summary.error:
        text.append("\n" + summary.error, style="red")
    return text


# --------------------------------------------------------------------------- detail screen


@dataclass(frozen=True, slots=True)
class FirstRead:
    summary: RunSummary
    history: RunHistory | None
    """Everything in metrics.jsonl, on the first read (a reload reads only the rest)."""
    log_lines: list[str]
    checkpoints: list[CheckpointRow]
    checkpoints_key: tuple[Any, ...]
    profile: str


class RunDetailScreen(RunActions):
    """One run: status, loss and memory curves, checkpoints, profile, log; followed live."""

    CSS_PATH = CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("r", "resume", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("ctrl+r,f5", "refresh", "Reload", key_display="^r"),
    ]

    class Loaded(Message):
        def __init__(self, first: FirstRead) -> None:
            super().__init__()
            self.first = first

    def __init__(self, summary: RunSummary) -> None:
        super().__init__()
        self.summary = summary
        self.run_dir = summary.path
        self.files = RunFiles(summary.path)
        self.loaded = False
        self._polls = 0
        self._checkpoints_key: tuple[Any, ...] | None = None

    @property
    def history(self) -> RunHistory:
        return self.files.history

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Static(self.summary.name, id="detail-status")
        with Horizontal(id="detail-plots"):
            yield LossPlot(id="detail-loss")
            yield MemoryPlot(id="detail-memory")
        with Horizontal(id="detail-bottom"):
            yield Log(max_lines=LOG_MAX_LINES, id="detail-log")
            with Vertical(id="detail-side"):
                yield DataTable(id="detail-checkpoints", cursor_type="none", zebra_stripes=True)
                with VerticalScroll(id="detail-profile-box"):
                    yield Static("", id="detail-profile", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Runs"
        self.sub_title = self.summary.name
        self.query_one("#detail-log", Log).border_title = LOG_TXT
        table = self.query_one("#detail-checkpoints", DataTable)
        table.border_title = "Checkpoints"
        table.add_column("checkpoint", key="name")
        table.add_column("step", key="step")
        table.add_column("size", key="size")
        table.add_column("state", key="state")
        self.query_one("#detail-profile-box").border_title = PROFILE_TOML
        self.query_one(LossPlot).show([self.history])
        self.query_one(MemoryPlot).show(self.history)
        self._show_status()
        self._read(first=True)

    def help_sections(self) -> list[HelpSection]:
        return [("Run detail", describe_bindings(self.app, self.BINDINGS))]

    # ---- reading

    @work(thread=True, exclusive=True, exit_on_error=False, group="run-detail")
    def _read(self, *, first: bool) -> None:
        """Read the run (in a thread). The first time also its metrics and log, which the
        UI thread then follows alone (the poll timer starts once they are shown)."""
        files = self.files
        first_read = FirstRead(
            summary=summarize_run(self.run_dir),
            history=files.read_history() if first else None,
            log_lines=files.poll_log() if first else [],
            checkpoints=list_checkpoint_rows(self.run_dir),
            checkpoints_key=checkpoints_signature(self.run_dir),
            profile=read_profile_text(self.run_dir),
        )
        self.post_message(self.Loaded(first_read))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        first = message.first
        self.summary = first.summary
        if first.history is not None:
            self.files.use(first.history)
            self.query_one(LossPlot).show([first.history])
            self.query_one(MemoryPlot).show(first.history)
        self.query_one("#detail-log", Log).write_lines(first.log_lines)
        self._show_checkpoints(first.checkpoints)
        self._checkpoints_key = first.checkpoints_key
        self.query_one("#detail-profile", Static).update(Text(first.profile))
        self._show_status()
        if not self.loaded:
            self.loaded = True
            self.set_interval(POLL_SECONDS, self.poll)

    def poll(self) -> None:
        """Read what the run wrote since the last poll (run.json every 4th time)."""
        added = self.files.poll_metrics()
        lines = self.files.poll_log()
        if lines:
            self.query_one("#detail-log", Log).write_lines(lines)
        self._polls += 1
        if self._polls % STATUS_EVERY_POLLS == 0:
            self.summary = summarize_run(self.run_dir)
            key = checkpoints_signature(self.run_dir)
            if key != self._checkpoints_key:
                self._checkpoints_key = key
                self._show_checkpoints(list_checkpoint_rows(self.run_dir))
            self._show_status()
        elif added:
            self._show_status()

    def _show_status(self) -> None:
        self.query_one("#detail-status", Static).update(summary_line(self.summary, self.history))

    def _show_checkpoints(self, rows: Sequence[CheckpointRow]) -> None:
        table = self.query_one("#detail-checkpoints", DataTable)
        table.clear()
        for row in rows:
            state = Text("ok", style="green") if row.problem is None else Text(row.problem, "red")
            step = f"{row.step:,}" if row.step is not None else "-"
            table.add_row(row.name, step, format_bytes(row.size_bytes), state)
        if not rows:
            table.add_row(Text("none yet", style="dim"), "", "", "")

    # ---- keys

    def selected_run(self) -> RunSummary | None:
        return self.summary

    def runs_changed(self) -> None:
        self.summary = summarize_run(self.run_dir)
        self._show_status()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_refresh(self) -> None:
        if self.loaded:
            self._read(first=False)


# --------------------------------------------------------------------------- compare screen


class RunCompareScreen(Screen[None]):
    """Several runs' loss curves on one plot, each in its colour; running ones followed."""

    CSS_PATH = CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
    ]

    class Loaded(Message):
        def __init__(self, summaries: list[RunSummary], histories: list[RunHistory]) -> None:
            super().__init__()
            self.summaries = summaries
            self.histories = histories

    def __init__(self, runs: Sequence[RunSummary]) -> None:
        super().__init__()
        self.summaries = list(runs)
        self.files = [RunFiles(run.path) for run in runs]
        self._polls = 0
        self._timer_started = False

    @property
    def histories(self) -> list[RunHistory]:
        return [files.history for files in self.files]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield LossPlot(id="compare-loss")
        yield Label("", id="compare-help")
        yield DataTable(id="compare-table", cursor_type="none")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Runs"
        self.sub_title = f"comparing {len(self.files)} runs"
        self.query_one("#compare-help", Label).update(
            "Each run in its own colour; its eval loss in the same colour with dots."
        )
        table = self.query_one("#compare-table", DataTable)
        for key in ("colour", "run", "status", "steps", "loss", "best eval", "profile"):
            table.add_column(key, key=key)
        self.query_one(LossPlot).show(self.histories)
        self._show_table()
        self._first_read()

    def help_sections(self) -> list[HelpSection]:
        return [("Compare runs", describe_bindings(self.app, self.BINDINGS))]

    @work(thread=True, exclusive=True, exit_on_error=False, group="run-compare")
    def _first_read(self) -> None:
        histories = [files.read_history() for files in self.files]
        summaries = [summarize_run(files.run_dir) for files in self.files]
        self.post_message(self.Loaded(summaries, histories))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.summaries = message.summaries
        for files, history in zip(self.files, message.histories, strict=True):
            files.use(history)
        self.query_one(LossPlot).show(self.histories)
        self._show_table()
        if not self._timer_started:
            self._timer_started = True
            self.set_interval(POLL_SECONDS, self.poll)

    def poll(self) -> None:
        added = sum(files.poll_metrics() for files in self.files)
        self._polls += 1
        if self._polls % STATUS_EVERY_POLLS == 0:
            self.summaries = [summarize_run(files.run_dir) for files in self.files]
            self._show_table()
        elif added:
            self._show_table()

    def _show_table(self) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear()
        for number, (summary, files) in enumerate(zip(self.summaries, self.files, strict=True)):
            last = files.history.last_train
            loss = last.get("loss") if last is not None else None
            best = files.history.best_eval
            table.add_row(
                Text("━━━━", style=rich_colour(run_colour(number))),
                summary.name,
                status_text(summary),
                steps_text(summary),
                loss_text(loss) if isinstance(loss, int | float) else "-",
                loss_text(best if best is not None else summary.best_eval_loss),
                summary.profile or "-",
            )

    def action_back(self) -> None:
        self.dismiss(None)
