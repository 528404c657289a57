"""What the Export wizard's settings step computes: the options from the fields as typed,
and the size and memory each quantization needs. No widgets here, so it is tested directly.

:func:`parse_settings` turns the fields' text into :class:`~pipeline.export.job.ExportOptions`
checked by :func:`~pipeline.export.job.check_options` (every problem in one message, the
pipeline's words); :func:`quant_rows` is the table of the six quantizations from
:func:`~pipeline.export.job.estimate_export`; :func:`memory_text` compares the converter's
peak with the memory available now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text

if TYPE_CHECKING:
    from pipeline.export.job import ExportEstimate, ExportOptions
    from pipeline.models.config import GemmaArch


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
        text = Text("Model size unknown: no estimate of the converter's memory. ", style="yellow")
        text.append(f"Available now: {gib(available)}." if available is not None else "")
        return text
    need = gib(estimate.peak_ram_bytes)
    kv = human_bytes(estimate.kv_cache_bytes)
    if available is None:
        return Text(f"The converter needs about {need} at its peak (KV cache {kv}).")
    if estimate.peak_ram_bytes > available:
        text = Text(
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
