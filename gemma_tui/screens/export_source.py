"""The Export wizard's first step: which run, which checkpoint.

:class:`SourceStep` shows the runs (newest first, as
:func:`pipeline.training.runs.list_runs` gives them; the screen reads them in a thread) and
the highlighted run's checkpoints (:func:`pipeline.training.checkpoint.list_checkpoints`:
quick, read here), damaged ones greyed with their problem and not selectable. The newest
usable checkpoint is highlighted, the one ``export_run`` takes by default. Each choice is
resolved as the export will resolve it (:func:`pipeline.export.job.resolve_source`: step,
model source) and its architecture guessed for the estimates; the step then posts
:class:`SourceStep.Chosen`. Enter on a checkpoint posts :class:`SourceStep.Confirmed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.export.job import ExportSource
    from pipeline.models.config import GemmaArch
    from pipeline.training.checkpoint import CheckpointInfo
    from pipeline.training.runs import RunSummary
    from pipeline.workspace import Workspace


def display_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def checkpoint_label(info: CheckpointInfo) -> Text:
    """One checkpoint in the list: its folder and step, or why it cannot be used."""
    name = "final" if info.final else info.path.name
    text = Text()
    text.append(f"{name:<12}", style="bold" if info.ok else "dim")
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


class SourceStep(Horizontal):
    """Runs on the left, the highlighted run's checkpoints on the right; see the module."""

    class Chosen(Message):
        """The checkpoint to export changed (``source`` None: nothing usable)."""

    class Confirmed(Message):
        """Enter on a checkpoint: go on to the settings."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.workspace: Workspace | None = None
        self.runs: list[RunSummary] = []
        self.run_dir: Path | None = None
        self.checkpoints: list[CheckpointInfo] = []
        self.checkpoint: CheckpointInfo | None = None
        self.source: ExportSource | None = None
        self.source_error: str | None = None
        self.arch: GemmaArch | None = None
        self.locked = False
        """True while an export runs: the choice stays as it is."""

    def compose(self) -> ComposeResult:
        yield DataTable(id="source-runs", cursor_type="row", zebra_stripes=True)
        with Vertical(id="source-side"):
            yield OptionList(id="source-checkpoints")
            yield Static(id="source-preview")

    def on_mount(self) -> None:
        table = self.query_one("#source-runs", DataTable)
        table.border_title = "Runs"
        self.query_one("#source-checkpoints", OptionList).border_title = "Checkpoints"
        for key, label in (("run", "run"), ("status", "status"), ("steps", "steps")):
            table.add_column(label, key=key)

    def show_runs(self, runs: list[RunSummary], workspace: Workspace, wanted: Path | None) -> None:
        """Show ``runs``; select ``wanted`` if it is one, else keep the selection (or take
        the newest). The table is rebuilt only when runs appeared or went."""
        from gemma_tui.screens.runs_actions import status_text, steps_text

        self.workspace = workspace
        table = self.query_one("#source-runs", DataTable)
        keys = [str(run.path) for run in runs]
        self.runs = runs
        if keys != [key.value for key in table.rows]:
            table.clear()
            for run in runs:
                table.add_row(run.name, status_text(run), steps_text(run), key=str(run.path))
            target = str(wanted or self.run_dir)
            row = keys.index(target) if target in keys else 0
            if runs:
                table.move_cursor(row=row, animate=False)
            self._highlight(runs[row].path if runs else None, force=True)
        elif wanted is not None and str(wanted) in keys:
            table.move_cursor(row=keys.index(str(wanted)), animate=False)
            self._highlight(wanted, force=True)
        if not runs:
            self.query_one("#source-preview", Static).update(
                Text(
                    f"No runs in {display_path(workspace.runs_dir)}. Train one on the Train "
                    "screen (2) first.",
                    style="yellow",
                )
            )

    @on(DataTable.RowHighlighted, "#source-runs")
    def _run_row(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        # rows rebuilt: highlights of the old cursor may still be queued
        if key is not None and event.cursor_row == event.data_table.cursor_row:
            self._highlight(Path(key))

    @on(DataTable.RowSelected, "#source-runs")
    def _run_chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.query_one("#source-checkpoints", OptionList).focus()

    def _highlight(self, run_dir: Path | None, *, force: bool = False) -> None:
        """Show ``run_dir``'s checkpoints, the preferred one highlighted."""
        from pipeline.training.checkpoint import list_checkpoints

        if self.locked or (run_dir == self.run_dir and not force):
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
        self._choose(preferred)

    @on(OptionList.OptionHighlighted, "#source-checkpoints")
    def _checkpoint_row(self, event: OptionList.OptionHighlighted) -> None:
        info = next((i for i in self.checkpoints if str(i.path) == event.option_id), None)
        if info is not None and info.ok and info != self.checkpoint and not self.locked:
            self._choose(info)

    @on(OptionList.OptionSelected, "#source-checkpoints")
    def _checkpoint_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Confirmed())

    def _choose(self, info: CheckpointInfo | None) -> None:
        """Resolve ``info`` as the export will (model source, step), and say so."""
        from pipeline.errors import PipelineError
        from pipeline.export.job import resolve_source
        from pipeline.training.memory import guess_arch

        self.checkpoint = info
        self.source, self.source_error, self.arch = None, None, None
        if info is not None and self.run_dir is not None:
            try:
                self.source = resolve_source(
                    self.run_dir, checkpoint_argument(info), self.workspace
                )
            except PipelineError as error:
                self.source_error = error.message
            else:
                self.arch = guess_arch(self.source.model_source)
        self._preview()
        self.post_message(self.Chosen())

    def _preview(self) -> None:
        preview = self.query_one("#source-preview", Static)
        if self.run_dir is None:
            preview.update("")
            return
        run = next((r for r in self.runs if r.path == self.run_dir), None)
        text = Text()
        text.append(self.run_dir.name, style="bold")
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
