"""The detail pane: one record as the model will see it, with the trained text coloured.

A valid record is rendered with the Gemma 3 chat template
(:func:`pipeline.data.formatter.format_conversation`): the characters inside
``trained_spans`` (the model turns, each with its ``<end_of_turn>``) are shown in the
"trained" colour, everything else (prompt, headers, ``<bos>``) dim. Once a tokenizer is
loaded, token boundaries are shown too, by alternating the background of neighbouring tokens
(:meth:`~pipeline.models.tokenizer.GemmaTokenizer.token_spans`; a character spelled by
byte-fallback pieces is shown as one token).
An invalid record is shown as its raw row with the issues found in it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.highlighter import JSONHighlighter
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.data.formatter import FormattedText
    from pipeline.data.validate import CheckedRecord
    from pipeline.models.tokenizer import GemmaTokenizer

TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"
SPECIAL_STYLE = "italic"
TOKEN_BACKGROUNDS = ("on #262a33", "")
"""Neighbouring tokens alternate between these backgrounds."""
SPECIAL_TOKENS = ("<bos>", "<start_of_turn>", "<end_of_turn>")


def render_formatted(
    formatted: FormattedText, token_spans: Sequence[tuple[int, int]] | None = None
) -> Text:
    """The formatted text, trained spans in :data:`TRAINED_STYLE`, the rest dim."""
    text = Text(formatted.text, style=MASKED_STYLE, no_wrap=False)
    for start, end in formatted.trained_spans:
        text.stylize(TRAINED_STYLE, start, end)
    for token in SPECIAL_TOKENS:
        start = formatted.text.find(token)
        while start != -1:
            text.stylize(SPECIAL_STYLE, start, start + len(token))
            start = formatted.text.find(token, start + len(token))
    if token_spans:
        # Empty spans (the byte-fallback pieces after a character's first) take no turn.
        shown = [(start, end) for start, end in token_spans if end > start]
        for number, (start, end) in enumerate(shown):
            background = TOKEN_BACKGROUNDS[number % 2]
            if background:
                text.stylize(background, start, end)
    return text


def _trained_chars(formatted: FormattedText) -> int:
    return sum(end - start for start, end in formatted.trained_spans)


def _issue_lines(record: CheckedRecord) -> Text:
    lines = Text()
    for issue in record.issues:
        style = "red" if issue.severity == "error" else "yellow"
        where = f"[{issue.field}] " if issue.field else ""
        lines.append(f"  {issue.severity}: ", style=f"bold {style}")
        lines.append(where, style="bold")
        lines.append(issue.reason)
        lines.append(f"  ({issue.code})\n", style="dim")
    return lines


def _raw_text(record: CheckedRecord) -> Text:
    if record.record is not None:
        try:
            dumped = json.dumps(record.record.data, ensure_ascii=False, indent=2, default=str)
        except (TypeError, ValueError):
            dumped = repr(record.record.data)
        return JSONHighlighter()(Text(dumped))
    return Text(record.raw or "(the line could not be read)")


class RecordDetail(VerticalScroll):
    """Shows one record; see the module docstring."""

    DEFAULT_CSS = """
    RecordDetail { padding: 0 1; }
    RecordDetail > #detail-header { margin-bottom: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="detail-header")
        yield Static(id="detail-body")

    def show_message(self, message: str) -> None:
        self.query_one("#detail-header", Static).update(message)
        self.query_one("#detail-body", Static).update("")

    def show_record(
        self,
        index: int,
        record: CheckedRecord,
        tokenizer: GemmaTokenizer | None = None,
        *,
        show_path: bool = False,
    ) -> None:
        """Show record ``index`` (global); ``show_path`` names its file (multi-file datasets)."""
        from pipeline.data.formatter import format_conversation

        where = f"Record {index + 1:,}"
        if show_path:
            where += f" · {record.ref.path}"
        if record.ref.line is not None:
            where += f" · line {record.ref.line:,}"
        header = Text(where, style="bold")
        conversation = record.conversation
        if conversation is None or any(i.severity == "error" for i in record.issues):
            count = len(record.issues)
            header.append(
                f" · invalid · {count} issue{'s' if count != 1 else ''}", style="bold red"
            )
            header.append("\n")
            header.append_text(_issue_lines(record))
            self.query_one("#detail-header", Static).update(header)
            body = Group(Text("Raw row", style="bold underline"), _raw_text(record))
            self.query_one("#detail-body", Static).update(body)
            self.scroll_home(animate=False)
            return

        formatted = format_conversation(conversation)
        trained = _trained_chars(formatted)
        total = len(formatted.text)
        header.append(f" · valid · {len(conversation.turns)} turns", style="bold green")
        header.append(f" · {total:,} chars, {trained:,} trained ({trained / max(total, 1):.0%})")
        token_spans = None
        if tokenizer is not None:
            ids, mask = tokenizer.encode_with_mask(formatted)
            header.append(f" · {len(ids):,} tokens, {sum(mask):,} trained")
            token_spans = tokenizer.token_spans(formatted.text, ids)
        header.append("\n")
        header.append(" trained ", style=TRAINED_STYLE + " reverse")
        header.append(" ")
        header.append(" masked ", style=MASKED_STYLE + " reverse")
        if token_spans is not None:
            header.append("  tokens alternate background", style="dim")
        if record.issues:
            header.append("\n")
            header.append_text(_issue_lines(record))
        self.query_one("#detail-header", Static).update(header)
        self.query_one("#detail-body", Static).update(render_formatted(formatted, token_spans))
        self.scroll_home(animate=False)
