"""The stats view: a summary of token lengths and the histogram.

The histogram widget (plotext) is mounted the first time stats are shown, so plotext stays
off the startup path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from textual.containers import Vertical
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from gemma_tui.widgets.length_histogram import LengthHistogram
    from pipeline.data.stats import DatasetStats


class StatsPane(Vertical):
    """Summary table on top, histogram below."""

    DEFAULT_CSS = """
    StatsPane > #stats-summary { height: auto; padding: 0 1; }
    StatsPane > LengthHistogram { height: 1fr; min-height: 10; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Press s to compute token statistics.", id="stats-summary")

    def reset(self) -> None:
        self.query_one("#stats-summary", Static).update("Press s to compute token statistics.")
        for histogram in self.query("LengthHistogram"):
            histogram.remove()

    def show_computing(self, *, first_time: bool) -> None:
        text = "Computing token statistics…"
        if first_time:
            text += (
                "\nThe tokenizer is built from the embedded Gemma 3 GGUF the first time"
                " (a second or two); later loads read it from the cache."
            )
        self.query_one("#stats-summary", Static).update(text)

    def _histogram(self) -> LengthHistogram:
        from gemma_tui.widgets.length_histogram import LengthHistogram

        found = self.query(LengthHistogram)
        if found:
            return found.first()
        histogram = LengthHistogram(id="length-histogram")
        self.mount(histogram)
        return histogram

    def show_stats(
        self,
        stats: DatasetStats,
        *,
        edges: Sequence[float],
        counts: Sequence[int],
        max_seq_len: int,
    ) -> None:
        """Show ``stats`` and the histogram ``counts`` over bins ``edges`` (from a worker)."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in summary_rows(stats, max_seq_len):
            table.add_row(label, value)
        self.query_one("#stats-summary", Static).update(table)
        self._histogram().set_series(edges, counts, limit=max_seq_len)


def summary_rows(stats: DatasetStats, max_seq_len: int) -> list[tuple[str, str]]:
    """(label, value): records, mean, p90, max, over max_seq_len, trained share.

    "over max_seq_len N" counts the records the trainer truncates at ``sequence_length`` N:
    those of more than N + 1 tokens (a row of N positions holds N + 1 tokens)."""
    summary = stats.summary
    examples = stats.examples
    over = f"{stats.truncated:,}"
    if examples:
        over += f" ({stats.truncated / examples:.1%})"
    rows = [
        ("records measured", f"{examples:,}"),
        ("invalid (skipped)", f"{stats.invalid:,}"),
        ("tokens, mean", f"{summary.mean:,.1f}"),
        ("tokens, p90", f"{summary.p90:,.0f}"),
        ("tokens, max", f"{summary.max:,}"),
        (f"over max_seq_len {max_seq_len:,}", over),
        ("trained share", f"{stats.trained_share:.1%}"),
        ("trained share after truncation", f"{stats.trained_share_after_truncation:.1%}"),
        ("total tokens", f"{stats.total_tokens:,}"),
    ]
    if stats.lost_all_trained:
        rows.append(("records that teach nothing", f"{stats.lost_all_trained:,}"))
    return rows
