"""The Export wizard's second step: quantization, lengths, formats, verification.

:class:`SettingsStep` shows the six quantizations with what each costs (a table), the memory
available now against the converter's peak, and the fields; every change is checked and the
problems shown in place, then :class:`SettingsStep.Changed` is posted. Its parts are plain
functions, tested directly: :func:`parse_settings` turns the fields' text into
:class:`~pipeline.export.job.ExportOptions` checked by
:func:`~pipeline.export.job.check_options` (every problem in one message, the pipeline's
words); :func:`quant_rows` estimates each quantization with
:func:`~pipeline.export.job.estimate_export`; :func:`memory_text` compares the converter's
peak with the memory available now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Checkbox, DataTable, Input, Label, Static
from textual.widgets.data_table import CellDoesNotExist

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.export.job import ExportEstimate, ExportOptions, ExportSource
    from pipeline.models.config import GemmaArch

DEFAULT_QUANT = "dynamic_int8"


@dataclass(frozen=True, slots=True)
class SettingsFields:
    """The settings step's fields as typed (text), and the chosen quantization and formats."""

    quant: str
    prefill: str
    kv_len: str
    threshold: str
    max_new_tokens: str
    formats: tuple[str, ...]
    force: bool = False


def _whole(name: str, text: str) -> int:
    value = text.strip().replace("_", "")
    if not re.fullmatch(r"-?\d+", value):
        raise ValueError(f"{name}: {text.strip()!r} is not a whole number")
    return int(value)


def parse_settings(fields: SettingsFields) -> tuple[ExportOptions | None, str | None]:
    """The options the fields describe, checked; or None and the problems in one line."""
    from pipeline.errors import ExportError
    from pipeline.export.job import ExportOptions, check_options

    problems: list[str] = []
    prefill: tuple[int, ...] = ()
    kv_len = max_new_tokens = 0
    threshold: float | None = None
    try:
        parts = [p for p in re.split(r"[,\s]+", fields.prefill.strip()) if p]
        prefill = tuple(_whole("prefill lengths", p) for p in parts)
    except ValueError as error:
        problems.append(str(error))
    try:
        kv_len = _whole("KV-cache length", fields.kv_len)
    except ValueError as error:
        problems.append(str(error))
    try:
        max_new_tokens = _whole("max new tokens", fields.max_new_tokens)
    except ValueError as error:
        problems.append(str(error))
    if fields.threshold.strip():
        text = fields.threshold.strip().removesuffix("%")
        try:
            threshold = float(text) / (100 if fields.threshold.strip().endswith("%") else 1)
        except ValueError:
            problems.append(f"threshold: {fields.threshold.strip()!r} is not a number")
    if problems:
        return None, "; ".join(problems)
    if threshold is not None and f"{threshold:.2f}" == default_threshold(fields.quant):
        threshold = None  # the quantization's own default (it follows the quantization)
    options = ExportOptions(
        quant=fields.quant,
        formats=fields.formats,
        prefill_lens=prefill,
        kv_len=kv_len,
        max_new_tokens=max_new_tokens,
        min_agreement=threshold,
        force=fields.force,
    )
    try:
        return check_options(options), None
    except ExportError as error:
        return None, error.message


def default_threshold(quant: str) -> str:
    """The verification threshold field's default for ``quant`` (e.g. ``0.90``)."""
    from pipeline.export.verify import MIN_AGREEMENT

    return f"{MIN_AGREEMENT.get(quant, 0.9):.2f}"


@dataclass(frozen=True, slots=True)
class QuantRow:
    """One line of the quantization table."""

    quant: str
    label: str
    estimate: ExportEstimate | None
    threshold: float


def quant_rows(arch: GemmaArch | None, kv_len: int) -> list[QuantRow]:
    """Every quantization with its estimate for ``arch`` (None: the architecture is unknown)."""
    from pipeline.export.job import QUANT_LABEL, QUANTS, estimate_export
    from pipeline.export.verify import MIN_AGREEMENT

    return [
        QuantRow(
            quant,
            QUANT_LABEL[quant],
            estimate_export(arch, quant, kv_len) if arch is not None else None,
            MIN_AGREEMENT[quant],
        )
        for quant in QUANTS
    ]


def quant_cells(row: QuantRow, available: int | None) -> tuple[str | Text, ...]:
    """The table cells of one quantization: name, file size, memory on the device (weights
    plus the KV cache), the converter's peak, the time, the default threshold."""
    from pipeline.export.job import gib, human_bytes

    estimate = row.estimate
    if estimate is None:
        unknown = Text("unknown", style="dim")
        return (row.quant, row.label, unknown, unknown, unknown, unknown, f"{row.threshold:.0%}")
    too_big = available is not None and estimate.peak_ram_bytes > available
    return (
        row.quant,
        row.label,
        human_bytes(estimate.file_bytes),
        human_bytes(estimate.file_bytes + estimate.kv_cache_bytes),
        Text(gib(estimate.peak_ram_bytes), style="bold red" if too_big else ""),
        f"~{estimate.minutes:.0f} min" if estimate.minutes >= 1 else "<1 min",
        f"{row.threshold:.0%}",
    )


QUANT_COLUMNS = (
    ("quant", "quantization"),
    ("label", "name"),
    ("file", "file"),
    ("device", "on device"),
    ("peak", "converter RAM"),
    ("time", "time (2 cores)"),
    ("threshold", "threshold"),
)


def memory_text(estimate: ExportEstimate | None, available: int | None) -> Text:
    """The converter's expected peak against the memory available now; red when short."""
    from pipeline.export.job import gib, human_bytes

    if estimate is None:
        text = Text()
        text.append("Model size unknown: no estimate of the converter's memory.", style="yellow")
        text.append(f" Available now: {gib(available)}." if available is not None else "")
        return text
    need = gib(estimate.peak_ram_bytes)
    kv = human_bytes(estimate.kv_cache_bytes)
    if available is None:
        return Text(f"The converter needs about {need} at its peak (KV cache {kv}).")
    if estimate.peak_ram_bytes > available:
        text = Text()
        text.append(
            f"Not enough memory: the converter needs about {need} at its peak, only "
            f"{gib(available)} is available now.",
            style="bold red",
        )
        text.append(
            " Stop other jobs (a training run, another export) or export on a bigger machine.",
            style="red",
        )
        return text
    return Text(
        f"Available RAM {gib(available)}; the converter needs about {need} at its peak "
        f"(KV cache {kv})."
    )


class SettingsStep(Vertical):
    """The quantization table, the memory line, the fields and their problems."""

    class Changed(Message):
        """The settings were checked again (``options`` None: see ``error``)."""

    class Confirmed(Message):
        """Enter in the table or a field: go on to the export."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.quant = DEFAULT_QUANT
        self.source: ExportSource | None = None
        self.arch: GemmaArch | None = None
        self.exports_dir: Path | None = None
        self.options: ExportOptions | None = None
        self.error: str | None = None
        self.existing: Path | None = None
        """An export folder that already has the name this export would take."""

    def compose(self) -> ComposeResult:
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

    def on_mount(self) -> None:
        table = self.query_one("#quant-table", DataTable)
        table.border_title = "Quantization"
        for key, label in QUANT_COLUMNS:
            table.add_column(label, key=key)
        self.refresh_estimates()
        self.check()

    def set_source(
        self, source: ExportSource | None, arch: GemmaArch | None, exports_dir: Path
    ) -> None:
        """The checkpoint to export (from the source step) and where exports go."""
        self.source, self.arch, self.exports_dir = source, arch, exports_dir
        self.refresh_estimates()
        self.check()

    # ---- the table

    def refresh_estimates(self) -> None:
        """Estimate every quantization again (the architecture, the KV length or the free
        memory changed)."""
        from pipeline.export.job import available_memory

        table = self.query_one("#quant-table", DataTable)
        try:
            kv_len = max(int(self.query_one("#opt-kv", Input).value.strip()), 1)
        except ValueError:
            kv_len = 1280
        available = available_memory()
        rows = quant_rows(self.arch, kv_len)
        if [key.value for key in table.rows] != [row.quant for row in rows]:
            table.clear()
            for row in rows:
                table.add_row(*quant_cells(row, available), key=row.quant)
            table.move_cursor(row=[r.quant for r in rows].index(self.quant), animate=False)
        else:
            for row in rows:
                cells = quant_cells(row, available)
                for (column, _), value in zip(QUANT_COLUMNS, cells, strict=True):
                    try:
                        table.update_cell(row.quant, column, value, update_width=True)
                    except CellDoesNotExist:
                        continue
        estimate = next((r.estimate for r in rows if r.quant == self.quant), None)
        self.query_one("#settings-memory", Static).update(memory_text(estimate, available))

    @on(DataTable.RowHighlighted, "#quant-table")
    def _quant_row(self, event: DataTable.RowHighlighted) -> None:
        quant = event.row_key.value
        if quant is None or quant == self.quant or event.cursor_row != event.data_table.cursor_row:
            return
        threshold = self.query_one("#opt-threshold", Input)
        if threshold.value.strip() == default_threshold(self.quant):
            threshold.value = default_threshold(quant)  # untouched: follow the quantization
        self.quant = quant
        self.refresh_estimates()
        self.check()

    @on(DataTable.RowSelected, "#quant-table")
    def _quant_chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(self.Confirmed())

    # ---- the fields

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "opt-kv":
            self.refresh_estimates()
        self.check()

    @on(Input.Submitted)
    def _field_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Confirmed())

    @on(Checkbox.Changed)
    def _checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.check()

    def fields(self) -> SettingsFields:
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

    def set_disabled(self, disabled: bool) -> None:
        """Read-only while an export runs."""
        for widget in self.query("Input, Checkbox"):
            widget.disabled = disabled

    def check(self) -> None:
        """Check the settings as they are now; show the problems in place."""
        from pipeline.export.job import export_name

        options, error = parse_settings(self.fields())
        self.options, self.error = options, error
        self.existing = None
        if options is not None and self.source is not None and self.exports_dir is not None:
            folder = self.exports_dir / export_name(self.source, options.quant)
            self.existing = folder if folder.exists() else None
        line = self.query_one("#settings-source", Static)
        if self.source is not None:
            text = Text()
            text.append(f"{self.source.run_dir.name} · ", style="dim")
            text.append("final" if self.source.final else self.source.checkpoint.name, "bold")
            text.append(f" · {self.source.model_source}", style="dim")
            text.append(f" ({self.arch.name if self.arch else 'unknown'})", style="dim")
            text.append(f" → exports/{export_name(self.source, self.quant)}")
            line.update(text)
        else:
            line.update(Text("No checkpoint chosen (step 1).", style="yellow"))
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
        self.post_message(self.Changed())
