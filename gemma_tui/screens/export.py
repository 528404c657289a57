"""The Export screen (key 4): a wizard from a trained run to a bundle that answers on a phone.

Five steps, shown one at a time (``^n`` next, ``^b`` back, or click the strip on top):

1. **Source**: the runs (:func:`pipeline.training.runs.list_runs`, read in a thread) and the
   highlighted run's checkpoints (:func:`pipeline.training.checkpoint.list_checkpoints`),
   damaged ones greyed with their problem. The run the Runs screen's ``e`` names, else the
   newest, is preselected, with its newest usable checkpoint.
2. **Settings**: the six quantizations with the expected file size, memory on the device and
   the converter's peak RAM (:func:`pipeline.export.job.estimate_export`) beside the memory
   available now, and the prefill and KV-cache lengths, formats, verification threshold and
   reply length; checked with :func:`~pipeline.export.job.check_options` on every change,
   its message shown in place.
3. **Export** (F5): :func:`pipeline.export.job.export_run` in a thread worker, its events
   through the :class:`~gemma_tui.bridge.EventBridge`: a stage list (pending, running with its
   seconds, done with its summary, failed), the elapsed time and the log. ``esc`` asks, then
   sets the stop flag; the pipeline stops the converter and writes nothing. When the export
   environment is missing, a dialog offers to create it first
   (:func:`pipeline.export.env.create_export_env`), then the export goes on.
4. **Report**: the verdict, the files with their sizes and the verification report
   (``verify.md``).
5. **Try it**: one prompt, one greedy reply of the ``.task`` or ``.litertlm`` on the CPU
   (:func:`pipeline.export.job.bundle_replies`).

Nothing heavy is imported at module level: the pipeline's export code is imported in the
methods that use it, the model stack only ever in the worker threads (through the pipeline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import (
    Button,
    Checkbox,
    ContentSwitcher,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Log,
    OptionList,
    RadioButton,
    RadioSet,
    Static,
)
from textual.widgets.data_table import CellDoesNotExist
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState, get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from gemma_tui.screens.export_settings import (
    QUANT_COLUMNS,
    SettingsFields,
    default_threshold,
    memory_text,
    parse_settings,
    quant_cells,
    quant_rows,
)
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
BUNDLE_SUFFIXES = (".task", ".litertlm")
TRY_MAX_NEW_TOKENS = 128
DEFAULT_QUANT = "dynamic_int8"

EXPORT_BINDINGS: list[BindingType] = [
    Binding("f5", "start", "Export", tooltip="Merge, convert, bundle and verify the checkpoint"),
    Binding("escape", "cancel", "Cancel", tooltip="Cancel the running job (asks first)"),
    Binding("ctrl+n", "next_step", "Next step", key_display="^n"),
    Binding("ctrl+b", "previous_step", "Back", key_display="^b"),
    Binding("f3", "switch_bundle", "Other bundle", tooltip="Try the .task or the .litertlm"),
    Binding("ctrl+r", "refresh", "Reread runs", key_display="^r"),
]


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def checkpoint_label(info: CheckpointInfo) -> Text:
    """One checkpoint in the source list: its folder and step, or why it cannot be used."""
    name = "final" if info.final else info.path.name
    text = Text(f"{name:<12}", style="bold" if info.ok else "dim")
    if info.step is not None:
        text.append(f" step {info.step:,}", style="" if info.ok else "dim")
    if not info.ok:
        text.append(f"  damaged: {info.problem}", style="dim red")
    return text


def checkpoint_argument(info: CheckpointInfo) -> int | str:
    """What ``export_run(checkpoint=...)`` takes for ``info``: "final" or its step."""
    return "final" if info.final or info.step is None else info.step


def preferred_checkpoint(infos: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint ``export_run`` takes by default: the newest usable (final on a tie)."""
    usable = [info for info in infos if info.ok]
    return max(usable, key=lambda i: (i.step or 0, i.final)) if usable else None


def verdict_text(result: ExportResult) -> Text:
    """The export's verdict in one or two lines: green when ready, red with the numbers."""
    from pipeline.export.job import human_bytes

    report = result.report
    if result.status == "ok":
        text = Text("✓ Ready", style="bold green")
        text.append(" · verification passed" if report else " · not verified (verify off)")
    else:
        text = Text("✗ Verification FAILED", style="bold red")
        text.append(" · the bundles were kept; do not ship them", style="red")
    text.append(f"\n{_display_path(result.out_dir)} · {format_seconds(result.seconds)}")
    if report is not None:
        for runtime in report.runtimes:
            line = (
                f"\n  {runtime.bundle}/{runtime.runtime}: agreement {runtime.agreement:.1%} "
                f"(threshold {report.threshold:.0%})"
            )
            if runtime.stop_pass + runtime.stop_fail:
                line += f", stop test {runtime.stop_pass}/{runtime.stop_pass + runtime.stop_fail}"
            text.append(line + ("" if runtime.passed else "  FAIL"), "" if runtime.passed else "red")
    for name, size in result.files.items():
        text.append(f"\n  {name}  {human_bytes(size)}", style="bold")
    return text


def report_markdown_of(result: ExportResult) -> str:
    """The verification report: the export's ``verify.md``, else built from the result."""
    from pipeline.export.job import VERIFY_MD
    from pipeline.export.verify import report_markdown

    path = result.out_dir / VERIFY_MD
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    if result.report is not None:
        return report_markdown(result.report)
    return "# Verification\n\nNot verified: the export ran with verification off.\n"


class ExportScreen(JobScreen):
    """See the module docstring."""

    CSS_PATH = Path(__file__).with_name("export.tcss")
    BINDINGS: ClassVar[list[BindingType]] = EXPORT_BINDINGS
    JOB_HINT = "esc cancel"

    class Listed(Message):
        """The runs, read by the listing worker."""

        def __init__(self, runs: list[RunSummary]) -> None:
            super().__init__()
            self.runs = runs

    def __init__(self) -> None:
        super().__init__()
        self.step = SOURCE
        self.runs: list[RunSummary] = []
        self.listed = 0
        """How many listings were shown (tests wait for the next one)."""
        self.wanted_run: Path | None = None
        """A run to select once the list is read (the Runs screen's ``e``)."""
        self.run_dir: Path | None = None
        self.checkpoints: list[CheckpointInfo] = []
        self.checkpoint: CheckpointInfo | None = None
        self.source: ExportSource | None = None
        self.source_error: str | None = None
        self.arch: GemmaArch | None = None
        self.quant = DEFAULT_QUANT
        self.options: ExportOptions | None = None
        self.settings_error: str | None = None
        self.existing: Path | None = None
        """An export folder that already has the name this export would take."""
        self.result: ExportResult | None = None
        self.replies: list[tuple[str, str, str]] = []
        """(bundle file, prompt, reply) of the Try-it step, oldest first."""
        self.state = "idle"
        """The export step's status word: idle, running, done, failed, cancelled."""
        self._stop = threading.Event()
        self._started: float | None = None
        self._ended: float | None = None
        self._pending: tuple[Path, int | str, ExportOptions] | None = None
        self._kinds: dict[Worker[Any], str] = {}
        self._asking: tuple[str, str] = ("", "")
        """(bundle file, prompt) of the question being answered."""
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
        from textual.widgets import Markdown

        yield Header(show_clock=False, icon="◆")
        yield JobBar(id="job-bar")
        yield StepStrip([title for _, title in STEPS], id="export-steps")
        with ContentSwitcher(initial=STEPS[SOURCE][0], id="export-body"):
            with Horizontal(id="step-source"):
                yield DataTable(id="source-runs", cursor_type="row", zebra_stripes=True)
                with Vertical(id="source-side"):
                    yield OptionList(id="source-checkpoints")
                    yield Static(id="source-preview")
            with Vertical(id="step-settings"):
                yield Static(id="settings-source")
                yield DataTable(id="quant-table", cursor_type="row")
                yield Static(id="settings-memory")
                with Horizontal(classes="settings-row"):
                    yield Label("prefill lengths", classes="settings-label")
                    yield Input("128", id="opt-prefill", compact=True)
                    yield Label("KV-cache length", classes="settings-label")
                    yield Input("1280", id="opt-kv", compact=True)
                with Horizontal(classes="settings-row"):
                    yield Label("verify threshold", classes="settings-label")
                    yield Input(default_threshold(DEFAULT_QUANT), id="opt-threshold", compact=True)
                    yield Label("max new tokens", classes="settings-label")
                    yield Input("32", id="opt-max-new", compact=True)
                with Horizontal(classes="settings-row"):
                    yield Label("formats", classes="settings-label")
                    yield Checkbox(".task", True, id="fmt-task", compact=True)
                    yield Checkbox(".litertlm", True, id="fmt-litertlm", compact=True)
                    yield Checkbox(".tflite", False, id="fmt-tflite", compact=True)
                    yield Checkbox("replace an existing export", False, id="opt-force", compact=True)
                yield Static(id="settings-error")
            with Vertical(id="step-export"):
                yield Static(id="export-summary")
                yield StageList(id="stage-list")
                with Horizontal(id="export-actions"):
                    yield Button("Start export (F5)", variant="primary", id="start-export")
                    yield Static(id="export-status")
                yield Log(max_lines=2000, id="export-log")
            with VerticalScroll(id="step-report"):
                yield Static(id="report-verdict")
                yield Markdown(id="report-md")
            with Vertical(id="step-try"):
                yield Static(id="try-intro")
                with Horizontal(id="try-row"):
                    yield Label("bundle", classes="settings-label")
                    with RadioSet(id="try-bundle", compact=True):
                        yield RadioButton(".task", True, id="try-task", compact=True)
                        yield RadioButton(".litertlm", id="try-litertlm", compact=True)
                yield Input(placeholder="Type a prompt, then enter", id="try-prompt")
                with VerticalScroll(id="try-transcript"):
                    yield Static(id="try-replies")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Export"
        self.query_one("#source-runs", DataTable).border_title = "Runs"
        self.query_one("#source-checkpoints", OptionList).border_title = "Checkpoints"
        self.query_one("#quant-table", DataTable).border_title = "Quantization"
        self.query_one("#export-log", Log).border_title = "Log"
        table = self.query_one("#source-runs", DataTable)
        for key, label in (("run", "run"), ("status", "status"), ("steps", "steps")):
            table.add_column(label, key=key)
        quant_table = self.query_one("#quant-table", DataTable)
        for key, label in QUANT_COLUMNS:
            quant_table.add_column(label, key=key)
        self._fill_quant_table()
        self._check_settings()
        self._show_step(SOURCE)
        self._show_export_status()
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
                    ("↑ ↓", "Settings: pick the quantization (size and RAM shown)"),
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
        return True

    # ---- steps

    def available(self) -> list[bool]:
        """Which steps can be shown now."""
        bundles = bool(self.result and self._bundles())
        return [
            True,
            self.source is not None,
            self.source is not None or self.busy or self.result is not None,
            self.result is not None,
            bundles,
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
        focus = {
            SOURCE: "#source-runs",
            SETTINGS: "#quant-table",
            EXPORT: "#start-export" if not self.busy else "#export-log",
            REPORT: "#step-report",
            TRY: "#try-prompt",
        }[index]
        widget = self.query_one(focus)
        if widget.display and widget.focusable:
            widget.focus()
        self.refresh_bindings()

    def _strip(self) -> None:
        self.query_one(StepStrip).show(self.step, self.available())

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

    def refresh_runs(self) -> None:
        """Read the runs again (in a thread) and show them."""
        self._list_runs()

    def action_refresh(self) -> None:
        self.refresh_runs()

    def select_run(self, run_dir: Path) -> None:
        """Show the source step with ``run_dir`` selected (from the Runs screen)."""
        if self.busy:
            self.notify("An export is running; the run was not changed.", severity="warning")
            return
        self.wanted_run = run_dir
        self._show_step(SOURCE)
        self.refresh_runs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="export-list")
    def _list_runs(self) -> None:
        from pipeline.training.runs import list_runs

        self.post_message(self.Listed(list_runs(self._workspace())))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self.show_runs(message.runs)

    def show_runs(self, runs: list[RunSummary]) -> None:
        from gemma_tui.screens.runs_actions import status_text, steps_text

        table = self.query_one("#source-runs", DataTable)
        keys = [str(run.path) for run in runs]
        wanted = str(self.wanted_run) if self.wanted_run is not None else None
        self.wanted_run = None
        if keys != [key.value for key in table.rows]:
            current = str(self.run_dir) if self.run_dir is not None else None
            self.runs = runs
            table.clear()
            for run in runs:
                table.add_row(run.name, status_text(run), steps_text(run), key=str(run.path))
            target = wanted or current
            row = keys.index(target) if target in keys else 0
            if runs:
                table.move_cursor(row=row, animate=False)
                self._run_highlighted(runs[row].path, force=True)
            else:
                self._run_highlighted(None, force=True)
        else:
            self.runs = runs
            if wanted in keys:
                table.move_cursor(row=keys.index(wanted), animate=False)
                self._run_highlighted(Path(wanted), force=True)
        if not runs:
            self.query_one("#source-preview", Static).update(
                Text(
                    f"No runs in {_display_path(self._workspace().runs_dir)}. Train one on the "
                    "Train screen (2) first.",
                    style="yellow",
                )
            )
        self.listed += 1

    @on(DataTable.RowHighlighted, "#source-runs")
    def _run_row(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        # rows rebuilt: highlights of the old cursor may still be queued
        if key is not None and event.cursor_row == event.data_table.cursor_row:
            self._run_highlighted(Path(key))

    @on(DataTable.RowSelected, "#source-runs")
    def _run_chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.query_one("#source-checkpoints", OptionList).focus()

    def _run_highlighted(self, run_dir: Path | None, *, force: bool = False) -> None:
        """Show ``run_dir``'s checkpoints, the preferred one highlighted."""
        from pipeline.training.checkpoint import list_checkpoints

        if run_dir == self.run_dir and not force:
            return
        if self.busy:
            return
        self.run_dir = run_dir
        self.checkpoints = list_checkpoints(run_dir) if run_dir is not None else []
        listing = self.query_one("#source-checkpoints", OptionList)
        listing.clear_options()
        listing.add_options(
            Option(checkpoint_label(info), id=str(info.path), disabled=not info.ok)
            for info in self.checkpoints
        )
        preferred = preferred_checkpoint(self.checkpoints)
        if preferred is not None:
            listing.highlighted = self.checkpoints.index(preferred)
        self._checkpoint_chosen(preferred)

    @on(OptionList.OptionHighlighted, "#source-checkpoints")
    def _checkpoint_row(self, event: OptionList.OptionHighlighted) -> None:
        info = next((i for i in self.checkpoints if str(i.path) == event.option_id), None)
        if info is not None and info.ok and info != self.checkpoint:
            self._checkpoint_chosen(info)

    @on(OptionList.OptionSelected, "#source-checkpoints")
    def _checkpoint_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.show_step(SETTINGS)

    def _checkpoint_chosen(self, info: CheckpointInfo | None) -> None:
        """Resolve ``info`` as the pipeline will (model source, step) and show it."""
        from pipeline.errors import PipelineError
        from pipeline.export.job import resolve_source
        from pipeline.training.memory import guess_arch

        self.checkpoint = info
        self.source, self.source_error, self.arch = None, None, None
        if info is not None and self.run_dir is not None:
            try:
                self.source = resolve_source(
                    self.run_dir, checkpoint_argument(info), self._workspace()
                )
            except PipelineError as error:
                self.source_error = error.message
            else:
                self.arch = guess_arch(self.source.model_source)
        self._show_source()
        self._fill_quant_table()
        self._check_settings()

    def _show_source(self) -> None:
        preview = self.query_one("#source-preview", Static)
        if self.run_dir is None:
            preview.update("")
            return
        run = next((r for r in self.runs if r.path == self.run_dir), None)
        text = Text(self.run_dir.name, style="bold")
        if run is not None:
            text.append(f" · {run.status} · {run.model or run.profile or '-'}", style="dim")
        if self.source is not None:
            source = self.source
            where = "final" if source.final else source.checkpoint.name
            text.append(f"\nExport {where} (step {source.step:,}) of ")
            text.append(source.model_source, style="bold")
            text.append(f" ({self.arch.name if self.arch else 'architecture unknown'})")
            text.append("\nenter or ^n: settings", style="dim")
        elif self.source_error:
            text.append(f"\n{self.source_error}", style="red")
        else:
            text.append("\nNo usable checkpoint: nothing to export from this run.", style="yellow")
        preview.update(text)
        self._strip()

    # ---- step 2: settings

    def _fill_quant_table(self) -> None:
        from pipeline.export.job import available_memory

        table = self.query_one("#quant-table", DataTable)
        kv = self._field_int("#opt-kv", 1280)
        available = available_memory()
        rows = quant_rows(self.arch, max(kv, 1))
        if [key.value for key in table.rows] != [row.quant for row in rows]:
            table.clear()
            for row in rows:
                table.add_row(*quant_cells(row, available), key=row.quant)
            table.move_cursor(row=[r.quant for r in rows].index(self.quant), animate=False)
        else:
            for row in rows:
                for (column, _), value in zip(
                    QUANT_COLUMNS, quant_cells(row, available), strict=True
                ):
                    try:
                        table.update_cell(row.quant, column, value, update_width=True)
                    except CellDoesNotExist:
                        continue
        estimate = next((r.estimate for r in rows if r.quant == self.quant), None)
        self.query_one("#settings-memory", Static).update(memory_text(estimate, available))

    def _field_int(self, selector: str, default: int) -> int:
        try:
            return int(self.query_one(selector, Input).value.strip())
        except ValueError:
            return default

    @on(DataTable.RowHighlighted, "#quant-table")
    def _quant_row(self, event: DataTable.RowHighlighted) -> None:
        quant = event.row_key.value
        if quant is None or quant == self.quant or event.cursor_row != event.data_table.cursor_row:
            return
        threshold = self.query_one("#opt-threshold", Input)
        if threshold.value.strip() == default_threshold(self.quant):
            threshold.value = default_threshold(quant)  # untouched: follow the quantization
        self.quant = quant
        self._fill_quant_table()
        self._check_settings()

    @on(DataTable.RowSelected, "#quant-table")
    def _quant_chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.show_step(EXPORT)

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if not (event.input.id or "").startswith("opt-"):
            return
        if event.input.id == "opt-kv":
            self._fill_quant_table()
        self._check_settings()

    @on(Input.Submitted)
    def _field_submitted(self, event: Input.Submitted) -> None:
        if (event.input.id or "").startswith("opt-"):
            self.show_step(EXPORT)

    @on(Checkbox.Changed)
    def _checkbox_changed(self) -> None:
        self._check_settings()

    def settings_fields(self) -> SettingsFields:
        formats = tuple(
            name
            for name in ("task", "litertlm", "tflite")
            if self.query_one(f"#fmt-{name}", Checkbox).value
        )
        return SettingsFields(
            quant=self.quant,
            prefill=self.query_one("#opt-prefill", Input).value,
            kv_len=self.query_one("#opt-kv", Input).value,
            threshold=self.query_one("#opt-threshold", Input).value,
            max_new_tokens=self.query_one("#opt-max-new", Input).value,
            formats=formats,
            force=self.query_one("#opt-force", Checkbox).value,
        )

    def _check_settings(self) -> None:
        """Check the settings as they are now; show the problems in place."""
        from pipeline.export.job import export_name

        options, error = parse_settings(self.settings_fields())
        self.options, self.settings_error = options, error
        self.existing = None
        if options is not None and self.source is not None:
            folder = self._workspace().exports_dir / export_name(self.source, options.quant)
            self.existing = folder if folder.exists() else None
        source = self.query_one("#settings-source", Static)
        if self.source is not None:
            name = export_name(self.source, self.quant)
            text = Text(f"{self.source.run_dir.name} · ", style="dim")
            text.append("final" if self.source.final else self.source.checkpoint.name, "bold")
            text.append(f" · {self.source.model_source}", style="dim")
            text.append(f" ({self.arch.name if self.arch else 'unknown'})", style="dim")
            text.append(f" → exports/{name}")
            source.update(text)
        else:
            source.update(Text("No checkpoint chosen (step 1).", style="yellow"))
        box = self.query_one("#settings-error", Static)
        if error is not None:
            box.update(Text(f"✗ {error}", style="bold red"))
        elif self.existing is not None and not (options and options.force):
            box.update(
                Text(
                    f"An export named {self.existing.name} exists; tick “replace an existing "
                    "export” to overwrite it.",
                    style="yellow",
                )
            )
        else:
            box.update(Text("✓ Settings are valid; F5 starts the export.", style="green"))
        box.set_class(error is not None, "-error")
        self._show_plan()

    # ---- step 3: export

    def _show_plan(self) -> None:
        """Before an export: the stages it will go through with the current settings."""
        if self.busy or self.state != "idle":
            return
        summary = self.query_one("#export-summary", Static)
        if self.options is None or self.source is None:
            summary.update(Text("Fix the settings (step 2) first.", style="yellow"))
            self.query_one(StageList).plan([])
            return
        summary.update(self._summary_text(self.source, self.options))
        self.query_one(StageList).plan(export_stages(self.options))

    def _summary_text(self, source: ExportSource, options: ExportOptions) -> Text:
        from pipeline.export.job import export_name

        text = Text(source.run_dir.name, style="bold")
        text.append(f" {'final' if source.final else source.checkpoint.name} as ")
        text.append(options.quant, style="bold")
        text.append(f" → {', '.join('.' + f for f in options.formats)}")
        text.append(
            f" · prefill {','.join(map(str, options.prefill_lens))} · KV {options.kv_len}"
            f" · exports/{export_name(source, options.quant)}",
            style="dim",
        )
        return text

    def _ready(self) -> tuple[Path, int | str, ExportOptions] | None:
        if self.source is None or self.checkpoint is None:
            self.notify("Pick a run with a usable checkpoint first (step 1).", severity="error")
            self.show_step(SOURCE)
            return None
        if self.options is None:
            self.notify(self.settings_error or "Fix the settings first.", severity="error")
            self.show_step(SETTINGS)
            return None
        if self.existing is not None and not self.options.force:
            self.notify(
                f"{self.existing.name} exists; tick “replace an existing export” to overwrite "
                "it, or choose another quantization.",
                title="Export exists",
                severity="warning",
            )
            self.show_step(SETTINGS)
            return None
        return self.source.run_dir, checkpoint_argument(self.checkpoint), self.options

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
                    "The export needs its tools; run `gemma-tui export-env` later, or press "
                    "F5 again.",
                    title="Not exported",
                    severity="warning",
                )

        self.app.push_screen(
            ConfirmModal(
                "Create the export environment now?",
                "Exporting needs litert-torch, MediaPipe and LiteRT-LM in their own virtual "
                f"environment, which is not there yet: {SIZE_HINT} (it downloads about "
                "4.5 GB). The export starts when it is ready.",
                yes="Create it",
                no="Not now",
            ),
            answered,
        )

    @on(Button.Pressed, "#start-export")
    def _start_pressed(self) -> None:
        self.action_start()

    def _begin(self, kind: str, title: str) -> bool:
        job = self.start_job(kind, title)
        if job is None:
            return False
        self._stop.clear()
        return True

    def _create_env(self, ready: tuple[Path, int | str, ExportOptions]) -> None:
        create = self.create_env_fn
        if create is None:
            from pipeline.export.env import create_export_env as create
        if not self._begin("env", "Export tools"):
            return
        self._pending = ready
        self._start_clock(plan=[*export_stages(ready[2])])
        self.query_one(StageList).add("export-env")
        self.query_one(StageList).start("export-env", "scripts/make_export_env.sh")
        self._launch(create)

    def start_export(self, run_dir: Path, checkpoint: int | str, options: ExportOptions) -> None:
        """Export ``checkpoint`` of ``run_dir`` with ``options`` in a thread worker."""
        export = self.export_fn
        if export is None:
            from pipeline.export.job import export_run as export
        if not self._begin("export", "Export"):
            return
        if self.state != "running":  # after creating the environment, the clock goes on
            self._start_clock(plan=export_stages(options))
        if self.source is not None:
            self.query_one("#export-summary", Static).update(
                self._summary_text(self.source, options)
            )
        self._launch(
            partial(
                export,
                run_dir,
                checkpoint=checkpoint,
                options=options,
                workspace=self._workspace(),
            )
        )

    def _start_clock(self, plan: list[str]) -> None:
        self.state = "running"
        self._started, self._ended = time.monotonic(), None
        self.query_one(StageList).plan(plan)
        self.query_one("#export-log", Log).clear()
        self.query_one("#start-export", Button).display = False
        self._show_export_status()
        self._show_step(EXPORT)

    def _launch(self, body: Callable[..., Any]) -> None:
        assert self.job is not None
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
        self.query_one("#export-log", Log).write_line(line)

    @on(JobEventsBatched)
    def _export_events(self, message: JobEventsBatched) -> None:
        from pipeline.events import LogLine, StageStarted

        if not self._is_current(message.job_id) or self.job is None or self.job.kind == "try":
            return
        stages = self.query_one(StageList)
        for event in message.events:
            if isinstance(event, StageStarted):
                if not stages.start(event.stage, event.detail):
                    self._log(f"› {event.stage} {event.detail}".rstrip())
            elif isinstance(event, LogLine):
                prefix = "" if event.level == "info" else f"{event.level}: "
                self._log(prefix + event.message)
        self._show_export_status()

    @on(JobMilestoneReached)
    def _export_milestone(self, message: JobMilestoneReached) -> None:
        if not self._is_current(message.job_id) or self.job is None or self.job.kind == "try":
            return
        event = message.event
        if not self.query_one(StageList).done(event.stage, event.summary, event.seconds):
            self._log(f"✓ {event.stage}: {event.summary} ({format_seconds(event.seconds)})")
        else:
            self._log(f"✓ {event.stage} ({format_seconds(event.seconds)}): {event.summary}")
        self._show_export_status()

    @on(JobProgressed)
    def _export_progressed(self, message: JobProgressed) -> None:
        if self._is_current(message.job_id) and self.job is not None and self.job.kind != "try":
            self.query_one(StageList).progress(message.progress)

    def _tick(self) -> None:
        if self.state == "running":
            self.query_one(StageList).tick()
            self._show_export_status()

    def _elapsed(self) -> str:
        if self._started is None:
            return ""
        end = self._ended if self._ended is not None else time.monotonic()
        return format_seconds(end - self._started)

    def _show_export_status(self, extra: Text | None = None) -> None:
        status = self.query_one("#export-status", Static)
        if self.state == "idle":
            status.update(Text("Ready: F5 (or enter on the button) starts.", style="dim"))
            return
        if self.state == "running":
            stages = self.query_one(StageList)
            running = stages.running
            text = Text(f"running · {self._elapsed()}", style="bold cyan")
            if self._stop.is_set():
                text.append(" · cancelling…", style="yellow")
            elif running is not None:
                text.append(f" · {running.label}", style="cyan")
            else:
                text.append(" · starting the next stage…", style="dim")
            status.update(text)
            return
        if extra is not None:
            status.update(extra)

    def job_succeeded(self, kind: str, title: str, result: Any) -> None:
        if kind == "env":
            self._log(f"Export environment ready: {result}")
            pending, self._pending = self._pending, None
            if pending is not None:
                self.start_export(*pending)
            return
        if kind == "try":
            self._show_reply(result)
            return
        self._export_done(result)

    def _export_done(self, result: ExportResult) -> None:
        from textual.widgets import Markdown

        self.result = result
        self.state = "done"
        self._ended = time.monotonic()
        ok = result.status == "ok"
        status = Text(
            f"{'done' if ok else 'done, verification FAILED'} in {format_seconds(result.seconds)}",
            style="bold green" if ok else "bold red",
        )
        self._show_export_status(status)
        self.query_one("#start-export", Button).display = True
        self.query_one("#report-verdict", Static).update(verdict_text(result))
        self.query_one("#report-md", Markdown).update(report_markdown_of(result))
        self._fill_bundles()
        if self.source is not None:
            self._check_settings()  # the export exists now
        self.notify(
            f"{result.out_dir.name}: {'ready' if ok else 'verification FAILED'}.",
            title="Export finished",
            severity="information" if ok else "error",
            timeout=10,
        )
        self._show_step(REPORT)

    @on(Worker.StateChanged)
    def _job_ended(self, event: Worker.StateChanged) -> None:
        from pipeline.errors import JobCancelled, PipelineError

        if event.state not in (WorkerState.ERROR, WorkerState.CANCELLED):
            if event.state is WorkerState.SUCCESS:
                self._kinds.pop(event.worker, None)
                self.refresh_bindings()
            return
        kind = self._kinds.pop(event.worker, None)
        if kind is None:
            return
        error = event.worker.error
        if kind == "try":
            self._show_reply(None, error)
            return
        self._pending = None
        self._ended = time.monotonic()
        stages = self.query_one(StageList)
        self.query_one("#start-export", Button).display = True
        if event.state is WorkerState.CANCELLED or isinstance(error, JobCancelled):
            self.state = "cancelled"
            stages.stop_running("cancelled", "cancelled")
            self._show_export_status(
                Text(f"cancelled after {self._elapsed()}, nothing written", style="bold yellow")
            )
            self._log("Cancelled; nothing was written.")
            return
        self.state = "failed"
        if isinstance(error, PipelineError):
            stages.stop_running("failed", error.message)
            text = Text(f"✗ {error.title}: ", style="bold red")
            text.append(error.message, style="red")
            if error.hint:
                text.append(f"\nHint: {error.hint}", style="yellow")
        else:
            stages.stop_running("failed", str(error))
            text = Text(f"✗ Unexpected error: {type(error).__name__}: {error}", style="bold red")
        self._show_export_status(text)
        self._log(text.plain)

    def action_cancel(self) -> None:
        if self.job is None:
            return
        if self.job.kind == "try":
            self._stop.set()
            return
        if self._stop.is_set():
            self.notify("Already cancelling: the converter is being stopped.")
            return
        creating = self.job.kind == "env"

        def answered(yes: bool | None) -> None:
            if yes and self.busy:
                self._stop.set()
                self.query_one(JobBar).show_detail("cancelling…")
                self._show_export_status()

        self.app.push_screen(
            ConfirmModal(
                "Cancel creating the environment?" if creating else "Cancel the export?",
                "The installer is stopped; run it again later (F5)."
                if creating
                else "The converter is stopped and its temporary folder removed: nothing is "
                "written under exports/.",
                yes="Cancel it",
                no="Keep going",
            ),
            answered,
        )

    # ---- step 5: try it

    def _bundles(self) -> list[Path]:
        if self.result is None:
            return []
        return [
            self.result.out_dir / name
            for name in self.result.files
            if Path(name).suffix in BUNDLE_SUFFIXES
        ]

    def _fill_bundles(self) -> None:
        bundles = {path.suffix: path for path in self._bundles()}
        task = self.query_one("#try-task", RadioButton)
        litertlm = self.query_one("#try-litertlm", RadioButton)
        task.disabled = ".task" not in bundles
        litertlm.disabled = ".litertlm" not in bundles
        if task.disabled and not litertlm.disabled:
            litertlm.value = True
        elif not task.disabled:
            task.value = True
        names = ", ".join(path.name for path in bundles.values()) or "none"
        intro = Text("Ask the exported model one question", style="bold")
        intro.append(
            f" (a fresh conversation each time, greedy, up to {TRY_MAX_NEW_TOKENS} tokens, on "
            f"the CPU). Bundles: {names}. F3 switches.",
            style="dim",
        )
        self.query_one("#try-intro", Static).update(intro)
        self._strip()

    def chosen_bundle(self) -> Path | None:
        """The bundle the Try-it step asks: the chosen .task or .litertlm."""
        bundles = {path.suffix: path for path in self._bundles()}
        wanted = ".litertlm" if self.query_one("#try-litertlm", RadioButton).value else ".task"
        return bundles.get(wanted) or next(iter(bundles.values()), None)

    def action_switch_bundle(self) -> None:
        task = self.query_one("#try-task", RadioButton)
        litertlm = self.query_one("#try-litertlm", RadioButton)
        other = litertlm if task.value else task
        if other.disabled:
            self.notify("This export has only one bundle.", severity="warning")
            return
        other.value = True

    @on(Input.Submitted, "#try-prompt")
    def _ask(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        bundle = self.chosen_bundle()
        if not text or bundle is None or self.say_busy():
            return
        replies = self.replies_fn
        if replies is None:
            from pipeline.export.job import bundle_replies as replies
        if not self._begin("try", f"Asking the {bundle.suffix}"):
            return
        self._asking = (bundle.name, text)
        event.input.value = ""
        self._show_transcript(pending=(bundle.name, text))
        self._launch(
            partial(
                replies,
                bundle,
                [text],
                max_new_tokens=TRY_MAX_NEW_TOKENS,
                workspace=self._workspace(),
            )
        )

    def _show_reply(self, result: list[str] | None, error: BaseException | None = None) -> None:
        name, prompt = self._asking
        if result is not None:
            reply = result[0] if result else ""
            self.replies.append((name, prompt, reply))
        elif error is not None:
            from pipeline.errors import JobCancelled, PipelineError

            if isinstance(error, JobCancelled):
                reply = "(cancelled)"
            elif isinstance(error, PipelineError):
                reply = f"(failed: {error.message})"
            else:
                reply = f"(failed: {type(error).__name__}: {error})"
            self.replies.append((name, prompt, reply))
        self._show_transcript()

    def _show_transcript(self, pending: tuple[str, str] | None = None) -> None:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True)
        table.add_column(ratio=1)
        exchanges = [(n, p, Text(r)) for n, p, r in self.replies]
        if pending is not None:
            exchanges.append((pending[0], pending[1], Text("thinking…", style="dim italic")))
        for name, prompt, reply in exchanges:
            table.add_row(Text("you", style="bold cyan"), Text(prompt))
            table.add_row(Text(Path(name).suffix.lstrip("."), style="bold magenta"), reply)
            table.add_row("", "")
        self.query_one("#try-replies", Static).update(table)
        self.query_one("#try-transcript", VerticalScroll).scroll_end(animate=False)

    # ---- helpers

    def _workspace(self) -> Workspace:
        from pipeline.workspace import Workspace

        return Workspace.default()
