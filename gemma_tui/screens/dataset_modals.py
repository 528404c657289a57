"""The Dataset screen's own small modals: how to read the open file, and the stats' length.

Like every modal (see :mod:`gemma_tui.screens.modals`) they only collect an answer and
``dismiss`` it; the Dataset screen runs the job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Input, Label

from gemma_tui.widgets.spec_fields import SpecFields
from pipeline.data.types import DatasetSpec  # plain dataclasses: light

if TYPE_CHECKING:
    from textual.app import ComposeResult

MIN_SEQ_LEN, MAX_SEQ_LEN = 8, 32768
"""The sequence lengths a profile accepts (``train.sequence_length``)."""


class SpecModal(ModalScreen[DatasetSpec | None]):
    """Asks how to read ``source`` again (format, column and role names), prefilled with
    ``spec``; dismisses the new spec."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]
    AUTO_FOCUS = "#spec-format"

    def __init__(self, source: str, spec: DatasetSpec | None) -> None:
        super().__init__(classes="modal")
        self.source = source
        self.spec = spec

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog spec-dialog"):
            yield Label(f"Read {self.source} as", classes="dialog-title")
            yield Label(
                "Choose the format (auto detects it per file) and rename columns or roles "
                "when the file uses other names; Enter reopens it.",
                classes="dialog-help",
            )
            yield SpecFields(self.spec, id="reopen-spec")
            yield Label("", classes="dialog-error", id="reopen-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Reopen (enter)", variant="primary", id="reopen")
                yield Button("Cancel (esc)", id="cancel")

    def _reopen(self) -> None:
        spec = self.query_one(SpecFields).spec()
        if spec is None:
            message = "Fix the column or role names first (the reason is above)."
            self.query_one("#reopen-error", Label).update(message)
            return
        self.dismiss(spec)

    @on(Input.Submitted)
    @on(Button.Pressed, "#reopen")
    def _submitted(self) -> None:
        self._reopen()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SeqLenModal(ModalScreen[int | None]):
    """Asks for the sequence length the token statistics are measured against."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]
    AUTO_FOCUS = "#seq-len"

    def __init__(self, current: int) -> None:
        super().__init__(classes="modal")
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog seq-len-dialog"):
            yield Label("Sequence length for the statistics", classes="dialog-title")
            yield Label(
                "Tokens per example the trainer keeps (a profile's train.sequence_length); "
                "longer examples are counted as truncated. Enter measures again, esc cancels.",
                classes="dialog-help",
            )
            yield Input(
                str(self.current),
                type="integer",
                validators=[Integer(MIN_SEQ_LEN, MAX_SEQ_LEN)],
                id="seq-len",
            )
            yield Label("", classes="dialog-error", id="seq-len-error")

    @on(Input.Changed, "#seq-len")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#seq-len-error", Label).update(self._reason(event.value) or "")

    @staticmethod
    def _reason(value: str) -> str | None:
        """Why ``value`` is not a sequence length (None: it is one)."""
        text = value.strip().replace("_", "")
        if not text:
            return "Type a number of tokens."
        try:
            number = int(text)
        except ValueError:
            return f"{value!r} is not a whole number."
        if not MIN_SEQ_LEN <= number <= MAX_SEQ_LEN:
            return f"Use {MIN_SEQ_LEN:,} to {MAX_SEQ_LEN:,} tokens."
        return None

    @on(Input.Submitted, "#seq-len")
    def _submitted(self, event: Input.Submitted) -> None:
        reason = self._reason(event.value)
        if reason is not None:
            self.query_one("#seq-len-error", Label).update(reason)
            return
        self.dismiss(int(event.value.strip().replace("_", "")))

    def action_cancel(self) -> None:
        self.dismiss(None)
