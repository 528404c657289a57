"""The Export wizard's last two steps: the report of a finished export, and trying it.

:class:`ReportStep` shows the verdict (``ExportResult.status``: green when ready; red, with
each runtime's agreement against the threshold, when the verification failed), the files
with their sizes, and the verification report as the export saved it (``verify.md``, or
built from the result with :func:`~pipeline.export.verify.report_markdown`).

:class:`TryStep` asks a bundle one question: the ``.task`` or the ``.litertlm`` (F3 or the
radio buttons switch), a prompt, and the replies so far under it. It posts
:class:`TryStep.Asked`; the screen runs :func:`~pipeline.export.job.bundle_replies` in its
worker and hands the answer back with :meth:`TryStep.add_reply`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from gemma_tui.screens.export_source import display_path
from gemma_tui.widgets.export_steps import format_seconds

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.export.job import ExportResult

BUNDLE_SUFFIXES = (".task", ".litertlm")
TRY_MAX_NEW_TOKENS = 128


def verdict_text(result: ExportResult) -> Text:
    """The verdict, each runtime's agreement (red where it failed) and the files."""
    from pipeline.export.job import human_bytes

    report = result.report
    text = Text()
    if result.status == "ok":
        text.append("✓ Ready", style="bold green")
        text.append(" · verification passed" if report else " · not verified (verify off)")
    else:
        text.append("✗ Verification FAILED", style="bold red")
        text.append(" · the bundles were kept; do not ship them", style="red")
    text.append(f"\n{display_path(result.out_dir)} · {format_seconds(result.seconds)}")
    if report is not None:
        for runtime in report.runtimes:
            line = (
                f"\n  {runtime.bundle}/{runtime.runtime}: {runtime.gate_name} {runtime.gate:.1%}"
                f" (threshold {report.threshold:.0%}), greedy {runtime.agreement:.1%}"
            )
            if runtime.stop_pass + runtime.stop_fail:
                line += f", stop test {runtime.stop_pass}/{runtime.stop_pass + runtime.stop_fail}"
            if runtime.passed:
                text.append(line)
            else:
                text.append(line + "  FAIL", style="red")
    for name, size in result.files.items():
        text.append(f"\n  {name}  {human_bytes(size)}", style="bold")
    return text


def report_markdown_of(result: ExportResult) -> str:
    """The verification report: the export's ``verify.md``, else built from the result."""
    from pipeline.export.job import VERIFY_MD
    from pipeline.export.verify import report_markdown

    try:
        return (result.out_dir / VERIFY_MD).read_text(encoding="utf-8")
    except OSError:
        pass
    if result.report is not None:
        return report_markdown(result.report)
    return "# Verification\n\nNot verified: the export ran with verification off.\n"


def bundles_of(result: ExportResult | None) -> list[Path]:
    """The ``.task`` and ``.litertlm`` files of an export."""
    if result is None:
        return []
    return [result.out_dir / n for n in result.files if Path(n).suffix in BUNDLE_SUFFIXES]


class ReportStep(VerticalScroll):
    """The verdict and the verification report of one export (scrolls)."""

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown

        yield Static(id="report-verdict")
        yield Markdown(id="report-md")

    def show(self, result: ExportResult) -> None:
        from textual.widgets import Markdown

        self.query_one("#report-verdict", Static).update(verdict_text(result))
        self.query_one("#report-md", Markdown).update(report_markdown_of(result))
        self.scroll_home(animate=False)


class TryStep(Vertical):
    """One prompt, one reply of a bundle; see the module docstring."""

    class Asked(Message):
        """The user asked ``bundle`` ``text``."""

        def __init__(self, bundle: Path, text: str) -> None:
            super().__init__()
            self.bundle = bundle
            self.text = text

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.bundles: list[Path] = []
        self.replies: list[tuple[str, str, str]] = []
        """(bundle file, prompt, reply), oldest first."""
        self.pending: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="try-intro")
        with Horizontal(id="try-row"):
            yield Label("bundle", classes="settings-label")
            with RadioSet(id="try-bundle", compact=True):
                yield RadioButton(".task", True, id="try-task", compact=True)
                yield RadioButton(".litertlm", id="try-litertlm", compact=True)
        yield Input(placeholder="Type a prompt, then enter", id="try-prompt")
        with VerticalScroll(id="try-transcript"):
            yield Static(id="try-replies")

    def set_bundles(self, bundles: list[Path]) -> None:
        """The bundles of the export to try (the .task first when there is one)."""
        self.bundles = bundles
        suffixes = {path.suffix for path in bundles}
        task = self.query_one("#try-task", RadioButton)
        litertlm = self.query_one("#try-litertlm", RadioButton)
        task.disabled = ".task" not in suffixes
        litertlm.disabled = ".litertlm" not in suffixes
        if task.disabled and not litertlm.disabled:
            litertlm.value = True
        elif not task.disabled:
            task.value = True
        names = ", ".join(path.name for path in bundles) or "none"
        intro = Text()
        intro.append("Ask the exported model one question", style="bold")
        intro.append(
            f" (a fresh conversation each time, greedy, up to {TRY_MAX_NEW_TOKENS} tokens, on "
            f"the CPU; ^t holds a whole conversation with it on the Chat screen). Bundles: "
            f"{names}.",
            style="dim",
        )
        self.query_one("#try-intro", Static).update(intro)

    def chosen(self) -> Path | None:
        """The bundle to ask: the chosen .task or .litertlm."""
        by_suffix = {path.suffix: path for path in self.bundles}
        wanted = ".litertlm" if self.query_one("#try-litertlm", RadioButton).value else ".task"
        return by_suffix.get(wanted) or next(iter(by_suffix.values()), None)

    def switch(self) -> bool:
        """Choose the other bundle (False: there is no other)."""
        task = self.query_one("#try-task", RadioButton)
        other = self.query_one("#try-litertlm", RadioButton) if task.value else task
        if other.disabled:
            return False
        other.value = True
        return True

    @on(Input.Submitted, "#try-prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        bundle = self.chosen()
        if text and bundle is not None:
            self.post_message(self.Asked(bundle, text))

    def asking(self, bundle: Path, text: str) -> None:
        """The question went out: clear the field, show it with "thinking…"."""
        self.pending = (bundle.name, text)
        self.query_one("#try-prompt", Input).value = ""
        self._show()

    def add_reply(self, reply: str) -> None:
        """The answer (or why there is none) to the pending question."""
        if self.pending is not None:
            self.replies.append((*self.pending, reply))
            self.pending = None
        self._show()

    def _show(self) -> None:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True)
        table.add_column(ratio=1)
        exchanges = [(name, prompt, Text(reply)) for name, prompt, reply in self.replies]
        if self.pending is not None:
            name, prompt = self.pending
            exchanges.append((name, prompt, Text("thinking…", style="dim italic")))
        for name, prompt, reply in exchanges:
            table.add_row(Text("you", style="bold cyan"), Text(prompt))
            table.add_row(Text(Path(name).suffix.lstrip("."), style="bold magenta"), reply)
            table.add_row("", "")
        self.query_one("#try-replies", Static).update(table)
        self.query_one("#try-transcript", VerticalScroll).scroll_end(animate=False)
