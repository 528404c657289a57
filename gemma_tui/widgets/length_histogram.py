"""A histogram of token lengths per record, with the ``max_seq_len`` cut-off marked.

Follows textual-plotext's advice: the widget owns its series, ``replot()`` redraws it, and
nothing heavy happens while rendering. The bins are computed by the caller (in a worker),
so a million records cost the UI thread nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot


class LengthHistogram(PlotextPlot):
    """Bars of ``counts`` over bins ``[edges[i], edges[i+1])``; a line at ``limit``."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._edges: list[float] = []
        self._counts: list[int] = []
        self._limit: int | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    @property
    def limit(self) -> int | None:
        """Where the red ``max_seq_len`` line is drawn (None: no line)."""
        return self._limit

    def set_series(
        self, edges: Sequence[float], counts: Sequence[int], *, limit: int | None
    ) -> None:
        """Take a new histogram (``len(edges) == len(counts) + 1``) and redraw."""
        if counts and len(edges) != len(counts) + 1:
            raise ValueError(f"{len(edges)} bin edges for {len(counts)} counts")
        self._edges = [float(edge) for edge in edges]
        self._counts = [int(count) for count in counts]
        self._limit = limit
        self.replot()

    def clear_series(self) -> None:
        self._edges, self._counts, self._limit = [], [], None
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("tokens per record")
        plt.ylabel("records")
        if not self._counts:
            plt.title("Tokens per record")
            self.refresh()
            return
        edges, counts, limit = self._edges, self._counts, self._limit
        centers = [(edges[i] + edges[i + 1]) / 2 for i in range(len(counts))]
        bin_width = (edges[-1] - edges[0]) / len(counts)
        plt.bar(centers, counts, width=0.8, color="cyan", marker="hd")
        low, high = edges[0], edges[-1]
        margin = (high - low) * 0.25  # how far out of the bars the red line may widen the plot
        if limit is None:
            plt.title("Tokens per record")
        elif limit > high + margin:
            plt.title(f"Tokens per record (all under max_seq_len {limit:,})")
        elif limit < low - margin:
            plt.title(f"Tokens per record (all over max_seq_len {limit:,})")
        else:
            plt.vline(limit, "red")
            low, high = min(low, limit - bin_width), max(high, limit + bin_width)
            plt.title(f"Tokens per record (red: max_seq_len {limit:,})")
        plt.xlim(low - bin_width / 2, high + bin_width / 2)
        ticks = [low + (high - low) * k / 4 for k in range(5)]
        plt.xticks(ticks, [f"{round(t):,}" for t in ticks])
        top = max(counts)
        step = max(1, -(-top // 4))
        yticks = [float(tick) for tick in range(0, top + step, step)]
        plt.yticks(yticks, [f"{tick:,.0f}" for tick in yticks])
        self.refresh()
