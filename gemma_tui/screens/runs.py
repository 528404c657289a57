"""The Runs screen (key 3): every run in the workspace, and what can be done with one.

The list comes from :func:`pipeline.training.runs.list_runs` (status, steps, best eval loss,
duration, age, profile, model), read in a thread every :data:`REFRESH_SECONDS` while the
screen is shown and on ``ctrl+r``/``f5``. Rows are updated in place (the cursor stays on its
run); the table is rebuilt only when runs appear or go.

Enter opens a run (:class:`~gemma_tui.screens.runs_detail.RunDetailScreen`, which follows a
running run live); space marks runs and ``c`` compares the marked ones on one plot; ``r``
resumes a stopped run (here or detached), ``s`` asks a running run to stop, ``d`` deletes a
run that no process holds, ``e`` opens the Export screen (4) on the run, ``t`` the Chat screen
(5) on its newest checkpoint. Nothing here writes a run except ``request_stop`` and the
delete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ContentSwitcher, DataTable, Footer, Header, Static
from textual.widgets.data_table import CellDoesNotExist

from gemma_tui.cli_train import format_age, format_duration
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from gemma_tui.screens.runs_actions import (
    RunActions,
    is_running,
    loss_text,
    status_text,
    steps_text,
)
from gemma_tui.screens.runs_detail import CSS_PATH, RunCompareScreen, RunDetailScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.training.runs import RunSummary

REFRESH_SECONDS = 2.0
MARK = "●"
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mark", " "),
    ("run", "run"),
    ("status", "status"),
    ("steps", "steps"),
    ("eval", "best eval"),
    ("duration", "duration"),
    ("age", "started"),
    ("profile", "profile"),
    ("model", "model"),
)
MODEL_MIN_WIDTH = 12
"""A model's description is long: the column gets the width left (at least this), and the
text is cut with an ellipsis."""


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def empty_text(runs_dir: Path) -> Text:
    """What the screen says when there is no run yet: how to start one."""
    text = Text("No runs yet", style="bold")
    text.append(f" in {_display_path(runs_dir)}.\n\n", style="dim")
    text.append("Start one:\n")
    text.append("  • press ")
    text.append("2", style="bold")
    text.append(" for the Train screen (pick a profile and a dataset), or\n")
    text.append("  • in a terminal (tmux keeps it going when you log out):\n      ")
    text.append("gemma-tui train --profile P --data FILE [--detach]", style="bold")
    text.append(
        "\n\nRuns appear here within two seconds, also those started elsewhere; open one with "
        "Enter to follow it live."
    )
    return text


class RunsScreen(RunActions):
    """Every run in the workspace: follow, compare, resume, stop or delete them."""

    CSS_PATH = CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", priority=True),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("r", "resume", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("d", "delete", "Delete"),
        Binding("e", "export", "Export", tooltip="Export this run (the Export screen, 4)"),
        Binding(
            "t",
            "chat",
            "Chat",
            tooltip="Talk to this run's newest checkpoint (the Chat screen, 5)",
        ),
        Binding("ctrl+r,f5", "refresh", "Refresh", key_display="^r"),
    ]

    class Listed(Message):
        """The runs, read by the refresh worker."""

        def __init__(self, runs: list[RunSummary], runs_dir: Path) -> None:
            super().__init__()
            self.runs = runs
            self.runs_dir = runs_dir

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        self.marked: set[Path] = set()
        self.runs_dir: Path | None = None
        self.listed = 0
        """How many listings were shown (tests wait for the next one)."""
        self._model_width = 40

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with ContentSwitcher(initial="runs-empty", id="runs-body"):
            yield Static("Reading the runs…", id="runs-empty")
            with Vertical(id="runs-list"):
                yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
                yield Static("", id="runs-preview")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Runs"
        self._rebuild()
        self.refresh_runs()
        self.set_interval(REFRESH_SECONDS, self._tick)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def help_sections(self) -> list[HelpSection]:
        return [("Runs", describe_bindings(self.app, self.BINDINGS))]

    # ---- reading the list

    def _tick(self) -> None:
        if self.is_current:  # not while another mode, a run's detail or a dialog is shown
            self.refresh_runs()

    def refresh_runs(self) -> None:
        """Read the runs again (in a thread) and show them."""
        self._list_runs()

    def runs_changed(self) -> None:
        self.refresh_runs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-list")
    def _list_runs(self) -> None:
        from pipeline.training.runs import list_runs
        from pipeline.workspace import Workspace

        workspace = Workspace.default()
        self.post_message(self.Listed(list_runs(workspace), workspace.runs_dir))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self.show_runs(message.runs, message.runs_dir)

    def show_runs(self, runs: list[RunSummary], runs_dir: Path) -> None:
        """Show ``runs``: cells updated in place, rows rebuilt only when the set changed."""
        self.runs = runs
        self.runs_dir = runs_dir
        self.marked &= {run.path for run in runs}
        table = self.query_one("#runs-table", DataTable)
        keys = [str(run.path) for run in runs]
        if keys != [key.value for key in table.rows] or self._fit_model_width() != (
            self._model_width
        ):
            self._rebuild()
        else:
            for run in runs:
                for (column, _), value in zip(COLUMNS, self._cells(run), strict=True):
                    try:
                        if table.get_cell(str(run.path), column) != value:
                            table.update_cell(str(run.path), column, value)
                    except CellDoesNotExist:
                        continue
        switcher = self.query_one("#runs-body", ContentSwitcher)
        self._show_preview()
        if runs:
            switcher.current = "runs-list"
        else:
            self.query_one("#runs-empty", Static).update(empty_text(runs_dir))
            switcher.current = "runs-empty"
        self._show_counts()
        self.listed += 1

    def _rebuild(self) -> None:
        """Fill the table again (the cursor stays on its run)."""
        table = self.query_one("#runs-table", DataTable)
        self._model_width = self._fit_model_width()
        selected = self._cursor_key()
        keys = [str(run.path) for run in self.runs]
        table.clear(columns=True)  # columns too: their widths only ever grow
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        for run in self.runs:
            table.add_row(*self._cells(run), key=str(run.path))
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)

    def _fit_model_width(self) -> int:
        """The width the other columns leave the model column, so that the table never
        scrolls sideways (from the texts, not the layout: the same on every refresh)."""
        table = self.query_one("#runs-table", DataTable)
        rows = [self._cells(run) for run in self.runs]
        others = 0
        for number, (key, label) in enumerate(COLUMNS):
            if key != "model":
                widths = [cell_len(_plain(row[number])) for row in rows]
                others += max([cell_len(label), *widths]) + 2 * table.cell_padding
        # The table's border (2) and room for a vertical scrollbar (2).
        room = self.size.width - 4 - others - 2 * table.cell_padding
        return max(MODEL_MIN_WIDTH, room)

    def on_resize(self) -> None:
        if self.runs and self._fit_model_width() != self._model_width:
            self._rebuild()

    def _cells(self, run: RunSummary) -> tuple[str | Text, ...]:
        return (
            Text(MARK, style="bold magenta") if run.path in self.marked else Text(" "),
            run.name,
            status_text(run),
            steps_text(run),
            loss_text(run.best_eval_loss),
            format_duration(run.duration_s),
            format_age(run.age_s),
            run.profile or "-",
            _cut(run.model or "-", self._model_width),
        )

    @on(DataTable.RowHighlighted, "#runs-table")
    def _show_preview(self) -> None:
        """The selected run in full: its folder, model, and why it failed or stopped."""
        run = self.selected_run()
        preview = self.query_one("#runs-preview", Static)
        if run is None:
            preview.update("")
            return
        text = Text(run.name, style="bold")
        text.append(" · ").append_text(status_text(run))
        text.append(f"\nfolder {_display_path(run.path)}", style="dim")
        text.append(f"\nmodel {run.model or '-'} · profile {run.profile or '-'}", style="dim")
        if run.error:
            text.append(f"\n{run.error}", style="red")
        preview.update(text)

    def _show_counts(self) -> None:
        counts: dict[str, int] = {}
        for run in self.runs:
            word = "running" if is_running(run.status) else run.status
            counts[word] = counts.get(word, 0) + 1
        parts = [f"{len(self.runs)} runs"] + [f"{n} {word}" for word, n in sorted(counts.items())]
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        self.sub_title = " · ".join(parts)

    def _cursor_key(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    def selected_run(self) -> RunSummary | None:
        key = self._cursor_key()
        return next((run for run in self.runs if str(run.path) == key), None)

    # ---- keys

    def action_refresh(self) -> None:
        self.refresh_runs()

    def action_open(self) -> None:
        run = self.selected_run()
        if run is None:
            self.notify("No run to open yet.", severity="warning")
            return
        self.app.push_screen(RunDetailScreen(run))

    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    async def action_export(self) -> None:
        from gemma_tui.screens.export import ExportScreen

        run = self.selected_run()
        if run is None:
            self.notify("No run to export yet.", severity="warning")
            return
        await self.app.switch_mode("export")
        screen = self.app.screen
        if isinstance(screen, ExportScreen):
            screen.select_run(run.path)

    async def action_chat(self) -> None:
        from gemma_tui.app import GemmaTuiApp

        run = self.selected_run()
        if run is None:
            self.notify("No run to chat with yet.", severity="warning")
            return
        app = self.app
        if isinstance(app, GemmaTuiApp):
            await app.chat_with(str(run.path))

    def action_mark(self) -> None:
        run = self.selected_run()
        if run is None:
            return
        self.marked ^= {run.path}
        table = self.query_one("#runs-table", DataTable)
        table.update_cell(str(run.path), "mark", self._cells(run)[0])
        self._show_counts()
        if table.cursor_row < table.row_count - 1:  # mark several with space, space, ...
            table.move_cursor(row=table.cursor_row + 1)

    def action_compare(self) -> None:
        runs = [run for run in self.runs if run.path in self.marked]
        if len(runs) < 2:
            self.notify(
                f"Mark two or more runs with space first ({len(runs)} marked); c then shows "
                "their loss curves on one plot.",
                title="Compare runs",
                severity="warning",
            )
            return
        self.app.push_screen(RunCompareScreen(runs))

    def action_delete(self) -> None:
        from pipeline.training.runs import is_locked

        run = self.selected_run()
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        if is_running(run.status) or is_locked(run.path):
            self.notify(
                f"{run.name} is in use by a running process; stop it (s) and wait for it to "
                "end before deleting it.",
                title="Cannot delete",
                severity="warning",
            )
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(run.path)

        self.app.push_screen(
            ConfirmModal(
                f"Delete {run.name}?",
                f"This deletes the folder {_display_path(run.path)} with its checkpoints, "
                f"metrics and log ({run.status}, step {steps_text(run)}). It cannot be undone.",
                yes="Delete",
                no="Keep",
            ),
            answered,
        )

    @work(thread=True, exit_on_error=False, group="runs-delete")
    def _delete(self, path: Path) -> None:
        from pipeline.training.runs import is_locked

        if is_locked(path):  # started again since the question
            self.app.call_from_thread(
                self.notify, f"{path.name} is in use now; not deleted.", severity="warning"
            )
            return
        try:
            shutil.rmtree(path)
        except OSError as error:
            self.app.call_from_thread(
                self.app.push_screen, ErrorModal.for_exception(_delete_error(path, error))
            )
            return
        self.app.call_from_thread(self.notify, f"Deleted {path.name}.", title="Run deleted")
        self.app.call_from_thread(self.refresh_runs)


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _delete_error(path: Path, error: OSError) -> Exception:
    from pipeline.errors import TrainingError

    reason = error.strerror or str(error)
    where = f" ({os.fsdecode(error.filename)})" if error.filename else ""
    return TrainingError(
        f"Cannot delete {path}: {reason}{where}.",
        hint="Check the folder's permissions; part of it may already be gone.",
    )
