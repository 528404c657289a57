"""The Export screen (key 4): a wizard from a trained run to a bundle that answers on a phone.

Five steps, one shown at a time (``^n`` next, ``^b`` back, or a click on the strip on top):

1. **Source** (:class:`~gemma_tui.screens.export_source.SourceStep`): the runs and the
   highlighted run's checkpoints, damaged ones greyed with their problem; the run the Runs
   screen's ``e`` names (else the newest) is preselected, with its newest usable checkpoint.
2. **Settings** (:class:`~gemma_tui.screens.export_settings.SettingsStep`): the six
   quantizations with their expected file size and converter peak RAM against the memory
   available now, the lengths, formats and verification threshold; checked on every change
   by :func:`~pipeline.export.job.check_options`, its message shown in place.
3. **Export** (F5): :func:`pipeline.export.job.export_run` in a thread worker of this screen,
   its events through the :class:`~gemma_tui.bridge.EventBridge` into a stage list (pending,
   running with its seconds, done with its summary, failed), the elapsed time and a log.
   ``esc`` asks, then sets the stop flag: the pipeline stops the converter and writes
   nothing. When the export environment is missing, a dialog offers to create it first
   (:func:`pipeline.export.env.create_export_env`, its steps in the log); the export follows.
4. **Report** and 5. **Try it** (:mod:`gemma_tui.screens.export_result`): the verdict and
   ``verify.md``; one prompt to the ``.task`` or ``.litertlm``
   (:func:`pipeline.export.job.bundle_replies`, in this screen's worker too); ``^t`` opens
   the Chat screen (5) on the chosen bundle for a whole conversation.

Jobs are this screen's (a mode's base screen stays mounted, so they are never cancelled by a
dialog closing). Nothing heavy is imported at module level: the pipeline's export code in the
methods that use it, the model stack only inside the pipeline, in the worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, ContentSwitcher, Footer, Header, Log, Static
from textual.worker import Worker, WorkerState, get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from gemma_tui.screens.export_result import (
    TRY_MAX_NEW_TOKENS,
    ReportStep,
    TryStep,
    bundles_of,
)
from gemma_tui.screens.export_settings import SettingsStep
from gemma_tui.screens.export_source import SourceStep, checkpoint_argument
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.job_screen import JOB_GROUP, JobScreen
from gemma_tui.screens.modals import ConfirmModal
from gemma_tui.widgets.export_steps import StageList, StepStrip, export_stages, format_seconds
from gemma_tui.widgets.job_bar import JobBar

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.export.env import ExportEnv
    from pipeline.export.job import ExportOptions, ExportResult, ExportSource
    from pipeline.models.config import GemmaArch
    from pipeline.training.checkpoint import CheckpointInfo
    from pipeline.training.runs import RunSummary
    from pipeline.workspace import Workspace

STEPS: tuple[tuple[str, str], ...] = (
    ("step-source", "Source"),
    ("step-settings", "Settings"),
    ("step-export", "Export"),
    ("step-report", "Report"),
    ("step-try", "Try it"),
)
SOURCE, SETTINGS, EXPORT, REPORT, TRY = range(len(STEPS))
FOCUS = {
    SOURCE: "#source-runs",
    SETTINGS: "#quant-table",
    EXPORT: "#start-export",
    REPORT: "#step-report",
    TRY: "#try-prompt",
}
"""What each step focuses when shown."""

EXPORT_BINDINGS: list[BindingType] = [
    Binding("f5", "start", "Export", tooltip="Merge, convert, bundle and verify the checkpoint"),
    Binding("escape", "cancel", "Cancel", tooltip="Cancel the running job (asks first)"),
    Binding("ctrl+n", "next_step", "Next step", key_display="^n"),
    Binding("ctrl+b", "previous_step", "Back", key_display="^b"),
    Binding("f3", "switch_bundle", "Other bundle", tooltip="Try the .task or the .litertlm"),
    Binding(
        "ctrl+t",
        "chat",
        "Chat",
        key_display="^t",
        tooltip="Hold a conversation with the chosen bundle (the Chat screen, 5)",
    ),
    Binding("ctrl+r", "refresh", "Reread runs", key_display="^r"),
]

Ready = tuple[Path, int | str, "ExportOptions"]
"""What an export needs: the run folder, the checkpoint ("final" or a step), the options."""


class ExportScreen(JobScreen):
    """See the module docstring."""

    CSS_PATH = Path(__file__).with_name("export.tcss")
    BINDINGS: ClassVar[list[BindingType]] = EXPORT_BINDINGS
    JOB_HINT = "esc cancel"

    class Listed(Message):
        """The runs, read by the listing worker."""

        def __init__(self, runs: list[RunSummary], wanted: Path | None) -> None:
            super().__init__()
            self.runs = runs
            self.wanted = wanted

    def __init__(self) -> None:
        super().__init__()
        self.step = SOURCE
        self.listed = 0
        """How many listings were shown (tests wait for the next one)."""
        self.result: ExportResult | None = None
        self.state = "idle"
        """The export step's state: idle, running, done, failed or cancelled."""
        self._stop = threading.Event()
        self._started: float | None = None
        self._ended: float | None = None
        self._pending: Ready | None = None
        """The export to start once the environment is made."""
        self._kinds: dict[Worker[Any], str] = {}
        self.export_fn: Callable[..., Any] | None = None
        """What exports: :func:`pipeline.export.job.export_run` when None; tests put a
        scripted event source here (same signature)."""
        self.find_env_fn: Callable[[], ExportEnv | None] | None = None
        """:func:`pipeline.export.env.find_export_env` when None."""
        self.create_env_fn: Callable[..., Any] | None = None
        """:func:`pipeline.export.env.create_export_env` when None."""
        self.replies_fn: Callable[..., list[str]] | None = None
        """:func:`pipeline.export.job.bundle_replies` when None."""

    # ---- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield JobBar(id="job-bar")
        yield StepStrip([title for _, title in STEPS], id="export-steps")
        with ContentSwitcher(initial=STEPS[SOURCE][0], id="export-body"):
            yield SourceStep(id="step-source")
            yield SettingsStep(id="step-settings")
            with Vertical(id="step-export"):
                yield Static(id="export-summary")
                yield StageList(id="stage-list")
                with Horizontal(id="export-actions"):
                    yield Button("Start export (F5)", variant="primary", id="start-export")
                    yield Static(id="export-status")
                yield Log(max_lines=2000, id="export-log")
            yield ReportStep(id="step-report")
            yield TryStep(id="step-try")
        yield Footer()

    @property
    def source_step(self) -> SourceStep:
        return self.query_one(SourceStep)

    @property
    def settings(self) -> SettingsStep:
        return self.query_one(SettingsStep)

    @property
    def try_step(self) -> TryStep:
        return self.query_one(TryStep)

    # The choices so far, for the keys and the tests.
    @property
    def run_dir(self) -> Path | None:
        return self.source_step.run_dir

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        return self.source_step.checkpoints

    @property
    def source(self) -> ExportSource | None:
        return self.source_step.source

    @property
    def arch(self) -> GemmaArch | None:
        return self.source_step.arch

    @property
    def quant(self) -> str:
        return self.settings.quant

    @property
    def options(self) -> ExportOptions | None:
        return self.settings.options

    @property
    def replies(self) -> list[tuple[str, str, str]]:
        return self.try_step.replies

    def on_mount(self) -> None:
        self.title = "Export"
        self.query_one(Log).border_title = "Log"
        self._show_step(SOURCE)
        self._show_status()
        self.set_interval(1.0, self._tick)
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        if not self.busy:
            self.refresh_runs()

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Export", describe_bindings(self.app, self.BINDINGS)),
            (
                "Export wizard",
                [
                    ("enter", "Source: choose the checkpoint and go to the settings"),
                    ("↑ ↓", "Settings: pick the quantization (its size and RAM are shown)"),
                    ("tab", "Next field; every change is checked at once"),
                    ("enter", "Try it: ask the bundle (one turn, greedy, on the CPU)"),
                ],
            ),
        ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False hides a key that means nothing here; None shows it dimmed (not now)
        if action == "start":
            return None if self.busy else True
        if action == "cancel":
            return self.busy
        if action == "next_step":
            return self.step < TRY
        if action == "previous_step":
            return self.step > SOURCE
        if action == "switch_bundle":
            return self.step == TRY
        if action == "chat":
            return self.step == TRY and bool(bundles_of(self.result))
        return True

    # ---- steps

    def available(self) -> list[bool]:
        """Which steps can be shown now."""
        chosen = self.source is not None
        return [
            True,
            chosen,
            chosen or self.state != "idle",
            self.result is not None,
            bool(bundles_of(self.result)),
        ]

    def show_step(self, index: int) -> bool:
        """Show step ``index`` if it can be shown (else say why); True when shown."""
        if not self.available()[index]:
            why = {
                SETTINGS: "Pick a run with a usable checkpoint first.",
                EXPORT: "Pick a run with a usable checkpoint first.",
                REPORT: "No export has finished yet: start one with F5.",
                TRY: "No bundle to try yet: export to .task or .litertlm first.",
            }
            self.notify(why.get(index, ""), title=STEPS[index][1], severity="warning")
            return False
        self._show_step(index)
        return True

    def _show_step(self, index: int) -> None:
        self.step = index
        self.query_one(ContentSwitcher).current = STEPS[index][0]
        self.query_one(StepStrip).show(index, self.available())
        self.sub_title = STEPS[index][1]
        focus = FOCUS[index] if not (index == EXPORT and self.busy) else "#export-log"
        widget = self.query_one(focus)
        if widget.focusable:
            widget.focus()
        self.refresh_bindings()

    def action_next_step(self) -> None:
        if self.step < TRY:
            self.show_step(self.step + 1)

    def action_previous_step(self) -> None:
        if self.step > SOURCE:
            self.show_step(self.step - 1)

    @on(StepStrip.StepChosen)
    def _step_chosen(self, event: StepStrip.StepChosen) -> None:
        self.show_step(event.index)

    # ---- step 1: source

    def refresh_runs(self, wanted: Path | None = None) -> None:
        """Read the runs again (in a thread) and show them, ``wanted`` selected."""
        self._list_runs(wanted)

    def action_refresh(self) -> None:
        self.refresh_runs()

    def select_run(self, run_dir: Path) -> None:
        """Show the source step with ``run_dir`` selected (the Runs screen's ``e``)."""
        if self.busy:
            self.notify("An export is running; the run was not changed.", severity="warning")
            return
        self._show_step(SOURCE)
        self.refresh_runs(run_dir)

    @work(thread=True, exit_on_error=False, group="export-list")
    def _list_runs(self, wanted: Path | None) -> None:
        from pipeline.training.runs import list_runs

        self.post_message(self.Listed(list_runs(self._workspace()), wanted))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self.source_step.show_runs(message.runs, self._workspace(), message.wanted)
        self.listed += 1

    @on(SourceStep.Chosen)
    def _source_chosen(self) -> None:
        step = self.source_step
        self.settings.set_source(step.source, step.arch, self._workspace().exports_dir)
        self.query_one(StepStrip).show(self.step, self.available())

    @on(SourceStep.Confirmed)
    def _source_confirmed(self) -> None:
        self.show_step(SETTINGS)

    # ---- step 2: settings

    @on(SettingsStep.Changed)
    def _settings_changed(self) -> None:
        """Before an export: the stages it will go through with these settings."""
        if self.state != "idle":
            return
        summary = self.query_one("#export-summary", Static)
        options, source = self.options, self.source
        if options is None or source is None:
            summary.update(Text("Fix the settings (step 2) first.", style="yellow"))
            self.query_one(StageList).plan([])
            return
        summary.update(self._summary_text(source, options))
        self.query_one(StageList).plan(export_stages(options))

    @on(SettingsStep.Confirmed)
    def _settings_confirmed(self) -> None:
        self.show_step(EXPORT)

    # ---- step 3: export

    def _summary_text(self, source: ExportSource, options: ExportOptions) -> Text:
        from pipeline.export.job import export_name

        text = Text()
        text.append(source.run_dir.name, style="bold")
        text.append(f" {'final' if source.final else source.checkpoint.name} as ")
        text.append(options.quant, style="bold")
        text.append(f" → {', '.join('.' + f for f in options.formats)}")
        text.append(
            f" · prefill {','.join(map(str, options.prefill_lens))} · KV {options.kv_len}"
            f" · exports/{export_name(source, options.quant)}",
            style="dim",
        )
        return text

    def _ready(self) -> Ready | None:
        """What to export, or None after saying what is missing."""
        checkpoint = self.source_step.checkpoint
        if self.source is None or checkpoint is None:
            self.notify("Pick a run with a usable checkpoint first (step 1).", severity="error")
            self._show_step(SOURCE)
            return None
        settings = self.settings
        if settings.options is None:
            self.notify(settings.error or "Fix the settings first.", severity="error")
            self._show_step(SETTINGS)
            return None
        if settings.existing is not None and not settings.options.force:
            self.notify(
                f"{settings.existing.name} exists; tick “replace an existing export” to "
                "overwrite it, or choose another quantization.",
                title="Export exists",
                severity="warning",
            )
            self._show_step(SETTINGS)
            return None
        return self.source.run_dir, checkpoint_argument(checkpoint), settings.options

    def action_start(self) -> None:
        if self.say_busy():
            return
        ready = self._ready()
        if ready is None:
            return
        find = self.find_env_fn
        if find is None:
            from pipeline.export.env import find_export_env as find
        if find() is not None:
            self.start_export(*ready)
            return
        from pipeline.export.env import SIZE_HINT

        def answered(yes: bool | None) -> None:
            if yes:
                self._create_env(ready)
            else:
                self.notify(
                    "The export needs its tools: F5 offers them again, or run "
                    "`gemma-tui export-env` in a terminal.",
                    title="Not exported",
                    severity="warning",
                )

        self.app.push_screen(
            ConfirmModal(
                "Create the export environment now?",
                "The export tools (litert-torch, MediaPipe, LiteRT-LM) live in their own "
                f"environment, which is not there yet: {SIZE_HINT}, downloaded once. The "
                "export starts when it is ready.",
                yes="Create it",
                no="Not now",
            ),
            answered,
        )

    @on(Button.Pressed, "#start-export")
    def _start_pressed(self) -> None:
        self.action_start()

    def _create_env(self, ready: Ready) -> None:
        create = self.create_env_fn
        if create is None:
            from pipeline.export.env import create_export_env as create
        if self.start_job("env", "Export tools") is None:
            return
        self._pending = ready
        self._start_clock(export_stages(ready[2]))
        stages = self.query_one(StageList)
        stages.add("export-env")
        stages.start("export-env", "scripts/make_export_env.sh")
        self._launch(create)

    def start_export(self, run_dir: Path, checkpoint: int | str, options: ExportOptions) -> None:
        """Export ``checkpoint`` of ``run_dir`` with ``options`` in a thread worker."""
        export = self.export_fn
        if export is None:
            from pipeline.export.job import export_run as export
        if self.start_job("export", "Export") is None:
            return
        if self.state != "running":  # after creating the environment, the clock goes on
            self._start_clock(export_stages(options))
        if self.source is not None:
            self.query_one("#export-summary", Static).update(
                self._summary_text(self.source, options)
            )
        body = partial(
            export, run_dir, checkpoint=checkpoint, options=options, workspace=self._workspace()
        )
        self._launch(body)

    def _start_clock(self, plan: list[str]) -> None:
        self.state = "running"
        self._started, self._ended = time.monotonic(), None
        self.query_one(StageList).plan(plan)
        self.query_one(Log).clear()
        self._running_layout(True)
        self._show_status()
        self._show_step(EXPORT)

    def _running_layout(self, running: bool) -> None:
        """While an export runs, the source and settings are read-only."""
        self.query_one("#start-export", Button).display = not running
        self.source_step.locked = running
        self.settings.set_disabled(running)

    def _launch(self, body: Callable[..., Any]) -> None:
        assert self.job is not None
        self._stop.clear()
        worker = self._job_worker(self.job.job_id, body)
        self.job.worker = worker
        self._kinds[worker] = self.job.kind

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def _job_worker(self, job_id: int, body: Callable[..., Any]) -> Any:
        worker = get_current_worker()
        bridge = EventBridge(self.post_message, job_id)
        try:
            return body(
                on_event=bridge, should_stop=lambda: self._stop.is_set() or worker.is_cancelled
            )
        finally:
            bridge.close()

    def _log(self, line: str) -> None:
        self.query_one(Log).write_line(line)

    def _follows(self, job_id: int) -> bool:
        """The message is the running export's (or the environment's)."""
        return self._is_current(job_id) and self.job is not None and self.job.kind != "try"

    @on(JobEventsBatched)
    def _export_events(self, message: JobEventsBatched) -> None:
        from pipeline.events import LogLine, StageStarted

        if not self._follows(message.job_id):
            return
        stages = self.query_one(StageList)
        for event in message.events:
            if isinstance(event, StageStarted):
                if not stages.start(event.stage, event.detail):
                    self._log(f"› {event.stage} {event.detail}".rstrip())
            elif isinstance(event, LogLine):
                prefix = "" if event.level == "info" else f"{event.level}: "
                self._log(prefix + event.message)
        self._show_status()

    @on(JobMilestoneReached)
    def _export_milestone(self, message: JobMilestoneReached) -> None:
        if not self._follows(message.job_id):
            return
        event = message.event
        self.query_one(StageList).done(event.stage, event.summary, event.seconds)
        self._log(f"✓ {event.stage} ({format_seconds(event.seconds)}): {event.summary}")
        self._show_status()

    @on(JobProgressed)
    def _export_progressed(self, message: JobProgressed) -> None:
        if self._follows(message.job_id):
            self.query_one(StageList).progress(message.progress)

    def _tick(self) -> None:
        if self.state == "running":
            self.query_one(StageList).tick()
            self._show_status()

    def _elapsed(self) -> str:
        if self._started is None:
            return ""
        end = self._ended if self._ended is not None else time.monotonic()
        return format_seconds(end - self._started)

    def _show_status(self, ended: Text | None = None) -> None:
        """The line beside the start button: ready, running (and where), or how it ended."""
        status = self.query_one("#export-status", Static)
        if ended is not None:
            status.update(ended)
        elif self.state == "idle":
            status.update(Text("Ready: F5 (or enter on the button) starts.", style="dim"))
        elif self.state == "running":
            running = self.query_one(StageList).running
            text = Text()
            text.append(f"running · {self._elapsed()}", style="bold cyan")
            if self._stop.is_set():
                text.append(" · cancelling…", style="yellow")
            elif running is not None:
                text.append(f" · {running.label}", style="cyan")
            else:
                text.append(" · starting the next stage…", style="dim")
            status.update(text)

    def job_succeeded(self, kind: str, title: str, result: Any) -> None:
        if kind == "env":
            pending, self._pending = self._pending, None
            if pending is not None:
                self.start_export(*pending)
        elif kind == "try":
            self.try_step.add_reply(result[0] if result else "")
        else:
            self._export_done(result)

    def _export_done(self, result: ExportResult) -> None:
        self.result = result
        self.state = "done"
        self._ended = time.monotonic()
        self._running_layout(False)
        self.query_one(StageList).finish()
        ok = result.status == "ok"
        word = "done" if ok else "done, verification FAILED"
        self._show_status(
            Text(f"{word} in {format_seconds(result.seconds)}", "bold green" if ok else "bold red")
        )
        self.query_one(ReportStep).show(result)
        self.try_step.set_bundles(bundles_of(result))
        self.settings.check()  # the export exists now
        self.notify(
            f"{result.out_dir.name}: {'ready' if ok else 'verification FAILED'}.",
            title="Export finished",
            severity="information" if ok else "error",
            timeout=10,
        )
        self._show_step(REPORT)

    @on(Worker.StateChanged)
    def _job_ended(self, event: Worker.StateChanged) -> None:
        """A job failed or was cancelled (the base class shows the error modal)."""
        from pipeline.errors import JobCancelled, PipelineError

        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        kind = self._kinds.pop(event.worker, None)
        if kind is None or event.state is WorkerState.SUCCESS:
            return
        error = event.worker.error
        cancelled = event.state is WorkerState.CANCELLED or isinstance(error, JobCancelled)
        if kind == "try":
            if cancelled:
                self.try_step.add_reply("(cancelled)")
            elif isinstance(error, PipelineError):
                self.try_step.add_reply(f"(failed: {error.message})")
            else:
                self.try_step.add_reply(f"(failed: {type(error).__name__}: {error})")
            return
        self._pending = None
        self._ended = time.monotonic()
        self._running_layout(False)
        stages = self.query_one(StageList)
        if cancelled:
            self.state = "cancelled"
            stages.stop_running("cancelled", "cancelled")
            self._show_status(
                Text(f"cancelled after {self._elapsed()}, nothing written", style="bold yellow")
            )
            self._log("Cancelled; nothing was written.")
            return
        self.state = "failed"
        text = Text()
        if isinstance(error, PipelineError):
            stages.stop_running("failed", error.message)
            text.append(f"✗ {error.title}: ", style="bold red")
            text.append(error.message, style="red")
            if error.hint:
                text.append(f"\nHint: {error.hint}", style="yellow")
        else:
            stages.stop_running("failed", str(error))
            text.append(f"✗ Unexpected error: {type(error).__name__}: {error}", style="bold red")
        self._show_status(text)
        self._log(text.plain)

    def action_cancel(self) -> None:
        job = self.job
        if job is None:
            return
        if job.kind == "try":
            self._stop.set()
            return
        if self._stop.is_set():
            self.notify("Already cancelling: the converter is being stopped.")
            return

        def answered(yes: bool | None) -> None:
            if yes and self.job is job:
                self._stop.set()
                self.query_one(JobBar).show_detail("cancelling…")
                self._show_status()

        creating = job.kind == "env"
        self.app.push_screen(
            ConfirmModal(
                "Cancel creating the environment?" if creating else "Cancel the export?",
                "The installer is stopped; F5 offers it again."
                if creating
                else "The converter is stopped and its temporary folder removed: nothing is "
                "written under exports/.",
                yes="Cancel it",
                no="Keep going",
            ),
            answered,
        )

    # ---- step 5: try it

    async def action_chat(self) -> None:
        """The Chat screen, talking to the bundle chosen on the Try it step."""
        from gemma_tui.app import GemmaTuiApp

        bundle = self.try_step.chosen()
        if bundle is None:
            self.notify("This export has no .task or .litertlm to chat with.", severity="warning")
            return
        if isinstance(self.app, GemmaTuiApp):
            await self.app.chat_with(str(bundle))

    def action_switch_bundle(self) -> None:
        if not self.try_step.switch():
            self.notify("This export has only one bundle.", severity="warning")

    @on(TryStep.Asked)
    def _asked(self, message: TryStep.Asked) -> None:
        replies = self.replies_fn
        if replies is None:
            from pipeline.export.job import bundle_replies as replies
        if self.start_job("try", f"Asking the {message.bundle.suffix}") is None:
            return
        self.try_step.asking(message.bundle, message.text)
        body = partial(
            replies,
            message.bundle,
            [message.text],
            max_new_tokens=TRY_MAX_NEW_TOKENS,
            workspace=self._workspace(),
        )
        self._launch(body)

    # ---- helpers

    def _workspace(self) -> Workspace:
        from pipeline.workspace import Workspace

        return Workspace.default()
