"""Small modal screens: confirm, error, open a file (and how to read it), choose output paths.

Modals only collect an answer and ``dismiss`` it; they never start workers (Textual cancels
a node's workers when it is removed), so the screen that pushed them runs the job.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Select, Static

from gemma_tui.widgets.path_input import DATASET_SUFFIXES, PathInput
from gemma_tui.widgets.spec_fields import SpecFields

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.data.types import DatasetSpec


class ConfirmModal(ModalScreen[bool]):
    """Asks a yes/no question; dismisses True for yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, message: str, *, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="modal")
        self.title_text = title
        self.message = message
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.message, classes="dialog-message", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="primary", id="yes")
                yield Button(f"{self.no} (n)", id="no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """What the error modal shows: title, message, hint (and details for unexpected errors)."""

    title: str
    message: str
    hint: str | None = None
    details: str | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorReport:
        from pipeline.errors import PipelineError

        if isinstance(error, PipelineError):
            return cls(error.title, error.message, error.hint)
        details = "".join(traceback.format_exception(error)).rstrip()
        return cls(
            "Unexpected error",
            f"{type(error).__name__}: {error}",
            "This is a bug in gemma-tui or a library it uses; the traceback is below.",
            details,
        )


class ErrorModal(ModalScreen[None]):
    """Shows an error: title, message and hint, in the words the pipeline chose."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close"),
    ]

    def __init__(self, report: ErrorReport) -> None:
        super().__init__(classes="modal")
        self.report = report

    @classmethod
    def for_exception(cls, error: BaseException) -> ErrorModal:
        return cls(ErrorReport.from_exception(error))

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(self.report.title, classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(
                    Text(self.report.message), classes="dialog-message", id="error-message"
                )
                if self.report.hint:
                    hint = Text("Hint: ", style="bold")
                    hint.append(self.report.hint)
                    yield Static(hint, classes="dialog-hint", id="error-hint")
                if self.report.details:
                    yield Static(Text(self.report.details, style="dim"), id="error-details")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", variant="primary", id="close")

    def action_close(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#close")
    def _pressed(self) -> None:
        self.dismiss(None)


class DatasetDirectoryTree(DirectoryTree):
    """A directory tree that shows folders and dataset files only, hidden entries left out."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [
            path
            for path in paths
            if not path.name.startswith(".")
            and (path.suffix in DATASET_SUFFIXES or self._safe_is_dir(path))
        ]


def _display_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """What the open modal returns: the source as typed, and how to read it."""

    source: str
    spec: DatasetSpec


class FileOpenModal(ModalScreen[OpenRequest | None]):
    """Asks for a dataset: type a path (Tab/→ completes it) or pick one in the tree; and how
    to read it (format, column and role names; ``spec`` prefills them)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]
    AUTO_FOCUS = "#open-path"

    def __init__(
        self,
        start: str | None = None,
        spec: DatasetSpec | None = None,
        *,
        root: str | Path | None = None,
    ) -> None:
        super().__init__(classes="modal")
        self.start = start or ""
        self.spec = spec
        self.root = Path(root) if root is not None else Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog open-dialog"):
            yield Label("Open a dataset", classes="dialog-title")
            yield Label(
                "A .jsonl, .json, .csv or .parquet file, or a folder of them. "
                "Tab or → completes, Enter opens; or pick a file in the tree.",
                classes="dialog-help",
            )
            yield PathInput(self.start, placeholder="path/to/data.jsonl", id="open-path")
            yield Label("", classes="dialog-error", id="open-error")
            yield SpecFields(self.spec, id="open-spec")
            yield DatasetDirectoryTree(self.root, id="open-tree")

    def _open(self, value: str) -> None:
        error = self.query_one("#open-error", Label)
        if not value:
            error.update("Type a path first.")
            return
        if not Path(os.path.expanduser(value)).exists() and not any(c in value for c in "*?["):
            error.update(f"Not found: {value}")
            return
        spec = self.query_one(SpecFields).spec()
        if spec is None:
            error.update("Fix the column or role names first (the reason is below them).")
            return
        self.dismiss(OpenRequest(value, spec))

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._open(self.query_one("#open-path", Input).value.strip())

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self._open(_display_path(event.path))

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True, slots=True)
class OutputField:
    """One output path the user may edit before a job runs."""

    label: str
    default: Path


@dataclass(frozen=True, slots=True)
class OutputChoice:
    """What the output modal returns: the paths in field order, and the chosen option."""

    paths: tuple[Path, ...]
    option: str | None = None


class OutputPathsModal(ModalScreen[OutputChoice | None]):
    """Shows where a job will write, lets the user edit it; refuses to write over an input."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(
        self,
        title: str,
        fields: Sequence[OutputField],
        *,
        inputs: Sequence[Path] = (),
        options: Sequence[str] = (),
        option_label: str = "",
        action: str = "Run",
        note: str = "",
    ) -> None:
        super().__init__(classes="modal")
        self.action_label = action
        self.note = note
        self.title_text = title
        self.fields = tuple(fields)
        self.inputs = tuple(inputs)
        self.options = tuple(options)
        self.option_label = option_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog output-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            for number, output in enumerate(self.fields):
                yield Label(output.label, classes="field-label")
                yield PathInput(
                    _display_path(output.default),
                    suffixes=None,
                    id=f"output-{number}",
                    classes="output-path",
                )
            if self.options:
                yield Label(self.option_label, classes="field-label")
                yield Select(
                    [(option, option) for option in self.options],
                    value=self.options[0],
                    allow_blank=False,
                    id="output-option",
                )
            yield Label("", classes="dialog-error", id="output-error")
            if self.note:
                yield Static(self.note, classes="dialog-help", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.action_label} (enter)", variant="primary", id="run")
                yield Button("Cancel (esc)", id="cancel")

    def _error(self, message: str) -> None:
        self.query_one("#output-error", Label).update(message)

    def _collect(self) -> OutputChoice | None:
        paths: list[Path] = []
        inputs = {path.resolve() for path in self.inputs}
        for number, output in enumerate(self.fields):
            value = self.query_one(f"#output-{number}", Input).value.strip()
            if not value:
                self._error(f"{output.label}: type a path.")
                return None
            path = Path(os.path.expanduser(value))
            if path.resolve() in inputs:
                self._error(f"{output.label}: {value} is an input file; choose another name.")
                return None
            if path.is_dir():
                self._error(f"{output.label}: {value} is a folder; add a file name.")
                return None
            paths.append(path)
        if len({path.resolve() for path in paths}) != len(paths):
            self._error("Each output needs its own file name.")
            return None
        option = None
        if self.options:
            value = self.query_one("#output-option", Select).value
            option = value if isinstance(value, str) else None
        return OutputChoice(tuple(paths), option)

    def _run(self) -> None:
        choice = self._collect()
        if choice is not None:
            self.dismiss(choice)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._run()

    @on(Button.Pressed, "#run")
    def _run_pressed(self) -> None:
        self._run()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
