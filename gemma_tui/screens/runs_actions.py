"""What the Runs screens share: how a run's status reads, and resume / stop on a run.

Both the runs list and a run's detail screen offer ``r`` (resume) and ``s`` (stop); the checks
(refuse a finished or running run, a stop for a run that is not running) and the dialogs live
here, in :class:`RunActions`, so the two screens say the same thing.

Resume detached starts a process (:func:`gemma_tui.detach.launch_detached`) from an app
worker: the detail screen may be closed before it answers, and Textual cancels a screen's
workers when the screen goes away.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Label, Static

from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from pipeline.training.runs import GONE
from pipeline.training.runs import stop_requested as _has_stop_request

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from gemma_tui.app import GemmaTuiApp
    from pipeline.training.runs import RunSummary

STATUS_COLOURS = {
    "running": "cyan",
    "finished": "green",
    "failed": "red",
    "stopped": "yellow",
    GONE: "dark_orange",
}


def is_running(status: str) -> bool:
    """``running``, or ``running (on <host>)`` for a run another machine writes."""
    return status.startswith("running")


def stop_requested(summary: RunSummary) -> bool:
    """A stop was asked for and the run has not stopped yet."""
    return is_running(summary.status) and _has_stop_request(summary.path)


def status_text(summary: RunSummary) -> Text:
    """The run's status, coloured; "running · stop requested" until the trainer stops."""
    status = summary.status
    colour = STATUS_COLOURS.get(status, "cyan" if is_running(status) else "magenta")
    text = Text(status, style=colour)
    if stop_requested(summary):
        text.append(" · stop requested", style="bold yellow")
    return text


def steps_text(summary: RunSummary) -> str:
    if summary.total_steps:
        return f"{summary.step:,}/{summary.total_steps:,}"
    return f"{summary.step:,}" if summary.step else "-"


def loss_text(loss: float | None) -> str:
    return f"{loss:.4f}" if loss is not None else "-"


class ResumeModal(ModalScreen[str | None]):
    """Asks where to resume a run: here (this TUI trains it) or detached (its own process)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("h", "choose('here')", "Resume here"),
        Binding("d", "choose('detached')", "Resume detached"),
        Binding("escape,n", "choose('')", "Cancel"),
    ]

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(classes="modal")
        self.summary = summary

    def compose(self) -> ComposeResult:
        summary = self.summary
        with Vertical(classes="dialog resume-dialog"):
            yield Label(f"Resume {summary.name}", classes="dialog-title")
            yield Static(
                f"The run {summary.status} at step {steps_text(summary)}; it continues from "
                "its last checkpoint with its own profile.\n\n"
                "Here: this TUI trains it (the Train screen shows it; quitting stops it).\n"
                "Detached: its own process trains it, and it keeps going when you quit; "
                "follow it from this screen.",
                classes="dialog-message",
                markup=False,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Resume here (h)", variant="primary", id="here")
                yield Button("Resume detached (d)", id="detached")
                yield Button("Cancel (esc)", id="cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss("here" if choice == "here" else "detached" if choice == "detached" else None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id or "")


class RunActions(Screen[None]):
    """A screen that shows runs: resume and stop the one :meth:`selected_run` returns."""

    def selected_run(self) -> RunSummary | None:
        """The run the keys act on (None: there is none)."""
        raise NotImplementedError

    def runs_changed(self) -> None:
        """Read the runs again (after a stop or a resume)."""

    # ---- resume

    def action_resume(self) -> None:
        summary = self.selected_run()
        if summary is None:
            self.notify("No run selected.", severity="warning")
            return
        if summary.status == "finished":
            self.notify(
                f"{summary.name} finished; there is nothing to resume. Start a new run with "
                "its profile on the Train screen (2) to train longer.",
                title="Cannot resume",
                severity="warning",
            )
            return
        if is_running(summary.status):
            self.notify(
                f"{summary.name} is running; it cannot be resumed twice. Stop it first (s).",
                title="Cannot resume",
                severity="warning",
            )
            return

        async def chosen(choice: str | None) -> None:
            if choice == "here":
                app: GemmaTuiApp = self.app  # type: ignore[assignment]
                await app.resume_run_here(summary.path)
            elif choice == "detached":
                self.resume_detached(summary.path)

        self.app.push_screen(ResumeModal(summary), chosen)

    def resume_detached(self, run_dir: Path) -> None:
        """Start a process that resumes ``run_dir``; errors become an error modal."""
        app = self.app

        def refresh() -> None:
            if self.is_attached:  # the detail screen may be closed by now
                self.runs_changed()

        def launch() -> None:
            from gemma_tui.detach import launch_detached

            try:
                run = launch_detached(resume=run_dir)
            except Exception as error:  # every failure is shown, in the pipeline's words
                app.call_from_thread(app.push_screen, ErrorModal.for_exception(error))
                return
            app.call_from_thread(
                app.notify,
                f"{run.run_dir.name} resumes in process {run.pid}; its console output goes "
                f"to {run.console_log}.",
                title="Resumed detached",
            )
            app.call_from_thread(refresh)

        app.run_worker(
            launch, thread=True, exit_on_error=False, group="runs-launch", description="Resume"
        )
        self.notify(f"Starting a process to resume {run_dir.name}…")

    # ---- stop

    def action_stop(self) -> None:
        summary = self.selected_run()
        if summary is None:
            self.notify("No run selected.", severity="warning")
            return
        if not is_running(summary.status):
            self.notify(
                f"{summary.name} is not running ({summary.status}).",
                title="Nothing to stop",
                severity="warning",
            )
            return
        if stop_requested(summary):
            self.notify(
                f"A stop is already requested; {summary.name} stops after its current step.",
                severity="warning",
            )
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            from pipeline.errors import PipelineError
            from pipeline.training.runs import request_stop

            try:
                request_stop(summary.path, reason="stopped from the Runs screen")
            except (PipelineError, OSError) as error:
                self.app.push_screen(ErrorModal.for_exception(error))
                return
            self.notify(
                f"{summary.name} stops after its current step, with a checkpoint.",
                title="Stop requested",
            )
            self.runs_changed()

        self.app.push_screen(
            ConfirmModal(
                f"Stop {summary.name}?",
                f"The run stops after its current step (now {steps_text(summary)}) and saves "
                "a checkpoint; resume it later with r.",
                yes="Stop it",
                no="Keep it running",
            ),
            answered,
        )
