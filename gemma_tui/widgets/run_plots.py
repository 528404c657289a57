"""Training curves: a run's metrics (:class:`RunHistory`) and the plots that draw them.

:class:`RunHistory` holds every point of one run, from ``metrics.jsonl`` records (a run on
disk, or one followed live with :class:`~pipeline.training.runs.MetricsTail`) or from
:class:`~pipeline.events.StepMetrics` / :class:`~pipeline.events.EvalMetrics` events (a run
in this process). A resumed run writes again the steps after its checkpoint: a step that goes
back drops the later points, so each step appears once. Non-finite losses are kept in the
history (the step happened) but never drawn. A run on several devices also keeps each
device's memory per step (:attr:`RunHistory.device_series`, from a train record's
``devices`` list).

:class:`LossPlot` and :class:`MemoryPlot` are throttled: :meth:`LossPlot.show` only records
what to draw, and a timer redraws (at most :data:`REDRAW_INTERVAL_S` apart) when a history's
:attr:`RunHistory.version` changed. Thousands of events a second then cost a few redraws a
second, and no point is lost: the history keeps them all, drawing thins very long series to
:data:`MAX_POINTS` (deterministically, the last point always kept).
"""

from __future__ import annotations

import dataclasses
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from textual_plotext import PlotextPlot

from pipeline.events import EvalMetrics, StepMetrics

GiB = 1024**3
REDRAW_INTERVAL_S = 0.25
BUSY_FACTOR = 6.0
"""A plot waits at least this many times its last drawing time before it redraws again, so
that plots never take more than about a sixth of the UI thread (a large plot on a wide
terminal takes 30-60 ms to draw; keys must not queue behind a stream of redraws)."""
"""Four redraws a second at most."""
PLOT_CHROME_ROWS = 5
"""Rows of a plot that are not its canvas: title, two frame lines, tick labels, axis labels."""
MAX_POINTS = 1000
"""Points drawn per series; longer series are thinned (the history keeps every point)."""
RUN_COLOURS = ("cyan", "orange", "green", "magenta", "blue+", "red", "white", "gray")
"""Colour of the n-th run in an overlay (plotext colour names)."""
_ANSI_CODES = {"cyan": 6, "orange": 3, "green": 2, "magenta": 5, "blue+": 12, "red": 1}
_ANSI_CODES |= {"white": 15, "gray": 8}


def run_colour(number: int) -> str:
    """The plotext colour of the ``number``-th run (from 0) of an overlay."""
    return RUN_COLOURS[number % len(RUN_COLOURS)]


def rich_colour(name: str) -> str:
    """The Rich style of a plotext colour name (plotext uses the 16 ANSI colours)."""
    return f"color({_ANSI_CODES[name]})"


MEMORY_FIELDS = (
    "bytes_in_use",
    "peak_bytes",
    "gpu_used_bytes",
    "gpu_total_bytes",
    "host_rss_bytes",
)
DEVICE_FIELDS = (
    "bytes_in_use",
    "peak_bytes",
    "bytes_limit",
    "gpu_used_bytes",
    "gpu_total_bytes",
)
"""The readings of one device (a ``devices`` entry of a train record)."""


def _float(value: Any) -> float:
    """A number as float; NaN for anything else (None, text, a damaged value)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _bytes(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def device_readings(value: Any) -> list[dict[str, Any]]:
    """A train record's ``devices`` list, cleaned: one ``{"device": name, <DEVICE_FIELDS>}``
    per named device (each reading an int or None), in the record's order, each name once.
    Anything else (absent in older runs, damaged) gives ``[]``."""
    if not isinstance(value, list | tuple):
        return []
    readings: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, Mapping):
            continue
        name = entry.get("device")
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        readings.append({"device": name} | {f: _bytes(entry.get(f)) for f in DEVICE_FIELDS})
    return readings


class RunHistory:
    """The metrics of one run, from metrics.jsonl records or live StepMetrics/EvalMetrics events.

    Series are plain lists, one entry per train step (``train_*``, ``learning_rate``,
    ``tokens_per_s`` and the memory readings, None where absent) or per eval pass
    (``eval_*``), ordered by step with each step once.

    Per device (the records' ``devices`` lists): :attr:`device_names` in order of first
    appearance, and :attr:`device_series` ``[name][field]`` for each of
    :data:`DEVICE_FIELDS`, aligned with :attr:`train_steps` too (None at a step where the
    device or the reading is missing).
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.train_steps: list[int] = []
        self.train_loss: list[float] = []
        self.learning_rate: list[float] = []
        self.tokens_per_s: list[float] = []
        self.bytes_in_use: list[int | None] = []
        self.peak_bytes: list[int | None] = []
        self.gpu_used_bytes: list[int | None] = []
        self.gpu_total_bytes: list[int | None] = []
        self.host_rss_bytes: list[int | None] = []
        self.device_names: list[str] = []
        """Every device some train record listed, in order of first appearance."""
        self.device_series: dict[str, dict[str, list[int | None]]] = {}
        """``[device][field]``: that reading per train step (None where missing)."""
        self._device_first: dict[str, int] = {}
        """The index in :attr:`train_steps` where each device first appeared."""
        self.eval_steps: list[int] = []
        self.eval_loss: list[float] = []
        self.last_train: dict[str, Any] | None = None
        """The newest train record (as given), or None before the first step."""
        self.best_eval: float | None = None
        """The lowest finite eval loss, or None."""
        self.has_gpu = False
        """Some step reported JAX device memory or an NVML card total."""
        self.version = 0
        """Bumped on every change; plots redraw when it moves."""

    def __len__(self) -> int:
        return len(self.train_steps)

    # ---- adding

    def add(self, record: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` record: ``{"type": "train"|"eval", "step": ..., ...}``.
        Records of other types, or without a usable step, are ignored."""
        kind = record.get("type")
        try:
            step = int(record["step"])
        except (KeyError, TypeError, ValueError):
            return
        if kind == "train":
            self._add_train(step, record)
        elif kind == "eval":
            self._add_eval(step, _float(record.get("loss")))

    def add_event(self, event: StepMetrics | EvalMetrics) -> None:
        """The same as :meth:`add`, from a pipeline event."""
        if isinstance(event, StepMetrics):
            self._add_train(event.step, {"type": "train", **dataclasses.asdict(event)})
        else:
            self._add_eval(event.step, _float(event.loss))

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.add(record)

    def _add_train(self, step: int, record: Mapping[str, Any]) -> None:
        if self.train_steps and step <= self.train_steps[-1]:
            self._truncate(step)
        self.train_steps.append(step)
        self.train_loss.append(_float(record.get("loss")))
        rate = record.get("learning_rate", record.get("lr"))  # metrics.jsonl writes "lr"
        self.learning_rate.append(_float(rate))
        self.tokens_per_s.append(_float(record.get("tokens_per_s")))
        for name in MEMORY_FIELDS:
            getattr(self, name).append(_bytes(record.get(name)))
        self._add_devices(device_readings(record.get("devices")))
        if self.bytes_in_use[-1] is not None or self.gpu_total_bytes[-1] is not None:
            self.has_gpu = True
        self.last_train = dict(record)
        self.version += 1

    def _add_devices(self, readings: list[dict[str, Any]]) -> None:
        """Append one step's reading of every known device (a new device gets None for the
        steps before it)."""
        index = len(self.train_steps) - 1
        for reading in readings:
            name = reading["device"]
            if name not in self.device_series:
                self.device_names.append(name)
                self._device_first[name] = index
                self.device_series[name] = {f: [None] * index for f in DEVICE_FIELDS}
        by_name = {reading["device"]: reading for reading in readings}
        for name, series in self.device_series.items():
            reading = by_name.get(name, {})
            for field, values in series.items():
                values.append(reading.get(field))

    def _add_eval(self, step: int, loss: float) -> None:
        if self.eval_steps and step <= self.eval_steps[-1]:
            cut = bisect_left(self.eval_steps, step)
            del self.eval_steps[cut:], self.eval_loss[cut:]
            self.best_eval = self._best_eval()
        self.eval_steps.append(step)
        self.eval_loss.append(loss)
        if math.isfinite(loss) and (self.best_eval is None or loss < self.best_eval):
            self.best_eval = loss
        self.version += 1

    def _truncate(self, step: int) -> None:
        """Drop the train points at ``step`` and after, and the evals after ``step - 1``: a
        resumed run writes them again from its checkpoint on."""
        cut = bisect_left(self.train_steps, step)
        for series in (
            self.train_steps,
            self.train_loss,
            self.learning_rate,
            self.tokens_per_s,
            *(getattr(self, name) for name in MEMORY_FIELDS),
        ):
            del series[cut:]
        for name in [n for n in self.device_names if self._device_first[n] >= cut]:
            self.device_names.remove(name)  # first seen in the dropped steps
            del self.device_series[name], self._device_first[name]
        for series in self.device_series.values():
            for values in series.values():
                del values[cut:]
        cut = bisect_left(self.eval_steps, step)
        del self.eval_steps[cut:], self.eval_loss[cut:]
        self.best_eval = self._best_eval()
        self.has_gpu = any(v is not None for v in self.bytes_in_use) or any(
            v is not None for v in self.gpu_total_bytes
        )
        self.last_train = None  # set again by the caller's append

    def _best_eval(self) -> float | None:
        finite = [loss for loss in self.eval_loss if math.isfinite(loss)]
        return min(finite) if finite else None


# --------------------------------------------------------------------------- drawing helpers


def thin(count: int, limit: int = MAX_POINTS) -> list[int]:
    """Indices of at most about ``limit`` evenly spaced points of ``count``, the last kept."""
    if count <= limit:
        return list(range(count))
    stride = math.ceil(count / limit)
    indices = list(range(0, count, stride))
    if indices[-1] != count - 1:
        indices.append(count - 1)
    return indices


def finite_points(
    xs: Sequence[int], ys: Sequence[float | int | None], *, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """The (x, y / scale) pairs whose y is a finite number, thinned to :data:`MAX_POINTS`."""
    pairs = [
        (float(x), float(y) / scale)
        for x, y in zip(xs, ys, strict=False)
        if y is not None and math.isfinite(y)
    ]
    keep = thin(len(pairs))
    return [pairs[i][0] for i in keep], [pairs[i][1] for i in keep]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * k / (count - 1) for k in range(count)]


class _ThrottledPlot(PlotextPlot):
    """A plot that redraws from a timer, only when :meth:`_signature` changed."""

    def __init__(
        self,
        *,
        interval_s: float = REDRAW_INTERVAL_S,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.interval_s = interval_s
        self.redraws = 0
        """How many times the plot was redrawn (for tests and benchmarks)."""
        self._drawn: tuple[Any, ...] | None = None
        self._last_redraw = 0.0
        self.draw_seconds = 0.0
        """How long the last drawing took (plotext build and ANSI decoding)."""
        self._rendered: tuple[tuple[Any, ...], Any] | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self._redraw()
        self.set_interval(self.interval_s, self._tick)

    def _signature(self) -> tuple[Any, ...]:
        """What the drawing depends on (compared with the drawn one on every tick)."""
        return (self.size, *self._content())

    def _content(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def replot(self) -> None:
        raise NotImplementedError

    @property
    def pending(self) -> bool:
        """Something changed since the last redraw."""
        return self._signature() != self._drawn

    def flush(self) -> None:
        """Redraw now if something changed (the timer calls this)."""
        if self.is_mounted and self.pending:
            self._redraw()

    def _tick(self) -> None:
        """The timer: redraw if something changed and the last drawing is far enough back
        (:data:`BUSY_FACTOR`)."""
        wait = max(self.interval_s, BUSY_FACTOR * self.draw_seconds)
        if time.monotonic() - self._last_redraw >= wait - 0.01:
            self.flush()

    def render(self) -> Any:
        """The drawing, built again only when the plot was redrawn or resized (Textual may
        ask for it more often: a parent's refresh, a theme change)."""
        key = (self.redraws, self.size, self.app.theme)
        if self._rendered is not None and self._rendered[0] == key:
            return self._rendered[1]
        started = time.perf_counter()
        text = super().render()
        self.draw_seconds = time.perf_counter() - started
        self._rendered = (key, text)
        return text

    def _redraw(self) -> None:
        self._drawn = self._signature()
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.replot()
        self.redraws += 1
        self._last_redraw = time.monotonic()
        self.refresh()

    def _x_axis(self, xs: Sequence[float]) -> None:
        plt = self.plt
        plt.xlabel("step")
        low, high = min(xs), max(xs)
        if high == low:
            low, high = low - 1, high + 1
        plt.xlim(low, high)
        ticks = sorted({float(round(t)) for t in _ticks(low, high)})  # whole steps, once each
        plt.xticks(ticks, [f"{round(t):,}" for t in ticks])

    def _y_axis(
        self,
        ys: Sequence[float],
        *,
        legend_rows: int,
        floor: float | None = None,
        zero: bool = False,
    ) -> None:
        """Y limits and ticks; the top rows are left free for the legend (plotext draws it in
        the top-left corner, where a loss curve starts)."""
        plt = self.plt
        low, high = (0.0 if zero else min(ys)), max(ys)
        pad = (high - low) * 0.05 or max(abs(high) * 0.05, 0.05)
        low, high = low - pad, high + pad
        if floor is not None:
            low = max(low, floor)
        canvas_rows = max(self.size.height - PLOT_CHROME_ROWS, 1)
        free = max(0.4, (canvas_rows - legend_rows - 0.5) / canvas_rows)
        high = low + (high - low) / free
        plt.ylim(low, high)
        ticks = _ticks(low, high)
        plt.yticks(ticks, [f"{t:.3g}" for t in ticks])


# --------------------------------------------------------------------------- loss


class LossPlot(_ThrottledPlot):
    """Train loss (a line) and eval loss (a line with dots) over steps; several runs overlay,
    each in its own colour, labelled with its :attr:`RunHistory.label`."""

    histories: tuple[RunHistory, ...] = ()

    def show(self, histories: Sequence[RunHistory]) -> None:
        """Draw these runs (at the next tick; the histories may keep growing)."""
        self.histories = tuple(histories)

    def _content(self) -> tuple[Any, ...]:
        return tuple((id(h), h.version, h.label) for h in self.histories)

    def replot(self) -> None:
        plt = self.plt
        plt.ylabel("loss")
        histories = self.histories
        overlay = len(histories) > 1
        all_x: list[float] = []
        all_y: list[float] = []
        labels = 0
        for number, history in enumerate(histories):
            colour = run_colour(number)
            name = history.label or f"run {number + 1}"
            xs, ys = finite_points(history.train_steps, history.train_loss)
            if xs:
                label = name if overlay else "train loss"
                plt.plot(xs, ys, marker="braille", color=colour, label=label)
                labels += 1
            eval_x, eval_y = finite_points(history.eval_steps, history.eval_loss)
            if eval_x:
                eval_colour = colour if overlay else "orange"
                label = f"{name} eval" if overlay else "eval loss"
                plt.plot(eval_x, eval_y, marker="braille", color=eval_colour, label=label)
                labels += 1
                if len(eval_x) <= 60:
                    plt.scatter(eval_x, eval_y, marker="●", color=eval_colour)
            all_x += xs + eval_x
            all_y += ys + eval_y
        plt.title(self._title(bool(all_x)))
        if all_x:
            self._x_axis(all_x)
            self._y_axis(all_y, legend_rows=labels, floor=0.0)

    def _title(self, drawn: bool) -> str:
        histories = self.histories
        if not histories:
            return "Loss: no run"
        if len(histories) > 1:
            title = f"Loss of {len(histories)} runs"
            return title if drawn else f"{title}: no steps yet"
        history = self.histories[0]
        if not history.train_steps and not history.eval_steps:
            return "Loss: no steps yet"
        if not drawn:
            return "Loss: no finite values yet (NaN or infinite)"
        parts = ["Loss"]
        last = history.last_train
        if last is not None and math.isfinite(_float(last.get("loss"))):
            parts.append(f"last {_float(last.get('loss')):.4f}")
        if history.best_eval is not None:
            parts.append(f"best eval {history.best_eval:.4f}")
        return "  ".join(parts)


# --------------------------------------------------------------------------- memory


GPU_SERIES = (
    ("bytes_in_use", "JAX in use (this process)", "cyan"),
    ("peak_bytes", "JAX peak (this process)", "magenta"),
    ("gpu_used_bytes", "NVML used (whole card)", "orange"),
    ("gpu_total_bytes", "card total", "gray"),
)
GPU_TITLE = "VRAM GiB (JAX = this process; NVML = card)"
CPU_TITLE = "No GPU: host RSS (GiB)"
DEVICES_TITLE = "Memory GiB per device (JAX in use, this process)"
TOTAL_COLOUR = "gray"
"""The card total line(s) of the per-device drawing (device lines take the run colours,
gray excepted)."""
_DEVICE_COLOURS = tuple(c for c in RUN_COLOURS if c != TOTAL_COLOUR)


def device_colour(number: int) -> str:
    """The plotext colour of the ``number``-th device (from 0) of the per-device drawing."""
    return _DEVICE_COLOURS[number % len(_DEVICE_COLOURS)]


def device_series(history: RunHistory) -> list[tuple[list[int | None], str, str]]:
    """The per-device lines of :class:`MemoryPlot`, ``(values, label, colour)``: one "in use"
    line per device, then the card totals, once each: one "card total" line when every card
    reports the same, else one "<device> total" line per card. Empty when the run has fewer
    than two devices or none of them reported what it uses (then the plot draws as for one
    process)."""
    names = history.device_names
    if len(names) < 2:
        return []
    in_use = [history.device_series[name]["bytes_in_use"] for name in names]
    if not any(v is not None for values in in_use for v in values):
        return []
    lines = [
        (values, f"{name} in use", device_colour(number))
        for number, (name, values) in enumerate(zip(names, in_use, strict=True))
    ]
    totals = [
        (name, history.device_series[name]["gpu_total_bytes"])
        for name in names
        if any(v is not None for v in history.device_series[name]["gpu_total_bytes"])
    ]
    if len({v for _, values in totals for v in values if v is not None}) == 1:
        # every card the same size: one line, at each step from any card that reported it
        columns = zip(*(values for _, values in totals), strict=True)
        merged = [next((v for v in column if v is not None), None) for column in columns]
        lines.append((merged, "card total", TOTAL_COLOUR))
    else:
        lines += [(values, f"{name} total", TOTAL_COLOUR) for name, values in totals]
    return lines


class MemoryPlot(_ThrottledPlot):
    """Memory per step in GiB. On a GPU: JAX's own use and peak (this process) beside NVML's
    view of the whole card (JAX preallocates most of the card, so NVML alone misleads);
    without a GPU: the host RSS. A run on several devices that report their use: one "in
    use" line per device and the card totals (:func:`device_series`)."""

    history: RunHistory | None = None

    def show(self, history: RunHistory) -> None:
        """Draw this run's memory (at the next tick)."""
        self.history = history

    def _content(self) -> tuple[Any, ...]:
        history = self.history
        return (id(history), history.version) if history is not None else ()

    def replot(self) -> None:
        plt = self.plt
        plt.ylabel("GiB")
        history = self.history
        if history is None or not history.train_steps:
            plt.title("Memory: no steps yet")
            return
        series = device_series(history)
        if series:
            title = DEVICES_TITLE
        elif history.has_gpu:
            series = [(getattr(history, f), label, colour) for f, label, colour in GPU_SERIES]
            title = GPU_TITLE
        else:
            series = [(history.host_rss_bytes, "host RSS", "cyan")]
            title = CPU_TITLE
        all_x: list[float] = []
        all_y: list[float] = []
        labels = 0
        for values, label, colour in series:
            xs, ys = finite_points(history.train_steps, values, scale=GiB)
            if xs:
                plt.plot(xs, ys, marker="braille", color=colour, label=label)
                labels += 1
                all_x += xs
                all_y += ys
        if not all_x:
            plt.title("Memory: no readings (this machine reports none)")
            return
        plt.title(title)
        self._x_axis(all_x)
        self._y_axis(all_y, legend_rows=labels, floor=0.0, zero=True)
