"""Memory of a run on several devices: RunHistory's per-device series (metrics records and
events), the memory plot's per-device lines, the monitor's devices line and placement log
line, and the CLI's step memory."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App, ComposeResult
from textual.widgets import Label, Log

from gemma_tui.cli_train import TrainPrinter, format_memory
from gemma_tui.widgets.run_monitor import RunMonitor, devices_line
from gemma_tui.widgets.run_plots import (
    CPU_TITLE,
    DEVICES_TITLE,
    GPU_TITLE,
    MemoryPlot,
    RunHistory,
    device_series,
)
from pipeline.events import DeviceMemory, RunStarted, StepMetrics
from pipeline.training.runs import MetricsWriter, read_metrics
from tests.tui.run_folders import write_run

GiB = 1024**3
CARD = 80 * GiB
PLACEMENT = "data parallel over 2 GPUs (4 sequences per device per micro-batch)"


def gpu(index: int, in_use: float, peak: float, total: int | None = CARD) -> dict[str, Any]:
    """A ``devices`` entry of a metrics line (sizes in GiB)."""
    return {
        "device": f"gpu:{index}",
        "bytes_in_use": int(in_use * GiB),
        "peak_bytes": int(peak * GiB),
        "bytes_limit": int(70 * GiB),
        "gpu_used_bytes": int(72 * GiB),
        "gpu_total_bytes": total,
    }


def train(step: int, devices: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"type": "train", "step": step, "total_steps": 100, "loss": 1.0}
    row["lr"] = 1e-4
    if devices is not None:
        row["devices"] = devices
        first = devices[0] if devices else {}
        row |= {k: first.get(k) for k in ("bytes_in_use", "peak_bytes", "gpu_total_bytes")}
    return row | extra


def step_event(step: int, devices: tuple[DeviceMemory, ...] = (), **memory: Any) -> StepMetrics:
    return StepMetrics(
        step=step, total_steps=100, loss=1.0, learning_rate=1e-4, grad_norm=1.0,
        tokens_per_s=1000.0, trained_tokens=100, elapsed_s=float(step), eta_s=10.0,
        devices=devices, **memory,
    )  # fmt: skip


def device_memory(index: int, in_use: float, peak: float) -> DeviceMemory:
    return DeviceMemory(
        f"gpu:{index}", int(in_use * GiB), int(peak * GiB), int(70 * GiB), 72 * GiB, CARD
    )


def two_gpu_history(steps: int = 10) -> RunHistory:
    history = RunHistory("dp")
    for step in range(1, steps + 1):
        history.add(train(step, [gpu(0, 3 + step / 10, 4.0), gpu(1, 2 + step / 10, 3.9)]))
    return history


# --------------------------------------------------------------------------- RunHistory


def test_history_keeps_a_series_per_device() -> None:
    history = RunHistory()
    history.add(train(1, [gpu(0, 3.0, 4.0), gpu(1, 2.0, 3.0)]))
    history.add(train(2, [gpu(0, 3.5, 4.5)]))  # gpu:1 missing at this step
    nulls = {"device": "gpu:1", "bytes_in_use": None, "peak_bytes": None}
    history.add(train(3, [gpu(0, 3.25, 4.5), nulls, gpu(2, 1.0, 1.5)]))  # a third appears

    assert history.device_names == ["gpu:0", "gpu:1", "gpu:2"]
    series = history.device_series
    assert series["gpu:0"]["bytes_in_use"] == [3 * GiB, int(3.5 * GiB), int(3.25 * GiB)]
    assert series["gpu:1"]["bytes_in_use"] == [2 * GiB, None, None]
    assert series["gpu:1"]["peak_bytes"] == [3 * GiB, None, None]
    assert series["gpu:2"]["peak_bytes"] == [None, None, int(1.5 * GiB)]
    assert series["gpu:0"]["gpu_total_bytes"] == [CARD] * 3
    for name in history.device_names:
        for values in series[name].values():
            assert len(values) == len(history.train_steps) == 3
    # the top-level fields stay the first device's
    assert history.bytes_in_use == [3 * GiB, int(3.5 * GiB), int(3.25 * GiB)]


def test_a_rewritten_step_truncates_every_device_series() -> None:
    history = two_gpu_history(6)
    history.add(train(7, [gpu(0, 9.0, 9.0), gpu(1, 9.0, 9.0), gpu(2, 9.0, 9.0)]))
    assert history.device_names == ["gpu:0", "gpu:1", "gpu:2"]
    # Resumed from the checkpoint at step 4 on the first two GPUs: steps 5.. come again.
    history.add(train(5, [gpu(0, 1.0, 1.5), gpu(1, 1.25, 1.5)]))

    assert history.train_steps == [1, 2, 3, 4, 5]
    assert history.device_names == ["gpu:0", "gpu:1"]  # gpu:2 only ever ran the dropped step
    assert "gpu:2" not in history.device_series
    in_use = history.device_series["gpu:1"]["bytes_in_use"]
    assert len(in_use) == 5
    assert in_use[:4] == [int((2 + s / 10) * GiB) for s in range(1, 5)]
    assert in_use[4] == int(1.25 * GiB)
    assert history.device_series["gpu:0"]["peak_bytes"][-1] == int(1.5 * GiB)
    # gpu:2 may come back later: it starts again with Nones for the steps before it
    history.add(train(6, [gpu(0, 1.0, 1.5), gpu(1, 1.0, 1.5), gpu(2, 2.0, 2.5)]))
    assert history.device_series["gpu:2"]["bytes_in_use"] == [None] * 5 + [2 * GiB]


def test_events_give_the_same_device_series_as_the_metrics_file(tmp_path: Path) -> None:
    from_events = RunHistory()
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as out:
        for step in (1, 2, 3):
            devices = (device_memory(0, 3.0 + step, 4.0 + step), device_memory(1, 2.0, 3.0))
            event = step_event(step, devices, bytes_in_use=devices[0].bytes_in_use)
            from_events.add_event(event)
            out.write_event(event)
    rows = read_metrics(path)
    # the trainer's line (dataclasses.asdict): the DeviceMemory fields, by name
    assert rows[0]["devices"][1] == {
        "device": "gpu:1",
        "bytes_in_use": 2 * GiB,
        "peak_bytes": 3 * GiB,
        "bytes_limit": 70 * GiB,
        "gpu_used_bytes": 72 * GiB,
        "gpu_total_bytes": CARD,
    }
    from_file = RunHistory()
    from_file.extend(rows)

    assert from_events.device_names == from_file.device_names == ["gpu:0", "gpu:1"]
    assert from_events.device_series == from_file.device_series
    assert from_events.device_series["gpu:0"]["bytes_in_use"] == [4 * GiB, 5 * GiB, 6 * GiB]
    assert from_events.device_series["gpu:1"]["bytes_limit"] == [70 * GiB] * 3


def test_old_and_damaged_records_have_no_devices() -> None:
    history = RunHistory()
    history.add(train(1, host_rss_bytes=GiB))  # written before devices were listed
    history.add(train(2, host_rss_bytes=GiB) | {"devices": "oops"})
    history.add(train(3, host_rss_bytes=GiB) | {"devices": [1, {"device": 7}, {"no": "id"}]})
    history.add_event(step_event(4, host_rss_bytes=GiB))

    assert history.train_steps == [1, 2, 3, 4]
    assert history.device_names == [] and history.device_series == {}
    assert device_series(history) == []
    assert devices_line(history.last_train) == ""


# --------------------------------------------------------------------------- the plot


class PlotApp(App[None]):
    def compose(self) -> ComposeResult:
        yield MemoryPlot()


def drawn(plot: MemoryPlot) -> str:
    return plot.render().plain  # type: ignore[union-attr]


async def draw(history: RunHistory) -> str:
    app = PlotApp()
    async with app.run_test(size=(100, 30)) as pilot:
        plot = app.query_one(MemoryPlot)
        plot.show(history)
        plot.flush()
        await pilot.pause()
        return drawn(plot)


def test_per_device_lines_for_two_gpus() -> None:
    history = two_gpu_history()
    lines = device_series(history)
    assert [label for _, label, _ in lines] == ["gpu:0 in use", "gpu:1 in use", "card total"]
    assert lines[0][0] == history.device_series["gpu:0"]["bytes_in_use"]
    assert lines[1][0] == history.device_series["gpu:1"]["bytes_in_use"]
    assert lines[2][0] == [CARD] * 10
    assert len({colour for _, _, colour in lines}) == 3


def test_cards_of_different_sizes_get_a_total_each() -> None:
    history = RunHistory()
    for step in (1, 2):
        history.add(train(step, [gpu(0, 3.0, 4.0), gpu(1, 3.0, 4.0, total=24 * GiB)]))
    labels = [label for _, label, _ in device_series(history)]
    assert labels == ["gpu:0 in use", "gpu:1 in use", "gpu:0 total", "gpu:1 total"]


async def test_memory_plot_draws_each_device() -> None:
    text = await draw(two_gpu_history())
    assert DEVICES_TITLE in text
    for label in ("gpu:0 in use", "gpu:1 in use", "card total"):
        assert label in text
    assert "JAX in use (this process)" not in text and "NVML used" not in text


async def test_memory_plot_on_one_device_draws_as_before() -> None:
    history = RunHistory()
    for step in range(1, 11):
        history.add(train(step, [gpu(0, 3.0, 4.0)], gpu_used_bytes=72 * GiB))
    assert device_series(history) == []
    text = await draw(history)
    assert GPU_TITLE in text and DEVICES_TITLE not in text
    for label in ("JAX in use (this process)", "JAX peak (this process)", "card total"):
        assert label in text
    assert "gpu:0 in use" not in text


async def test_memory_plot_on_cpu_devices_without_readings_shows_the_rss() -> None:
    history = RunHistory()
    cpus = [{"device": "cpu:0"}, {"device": "cpu:1"}]
    for step in range(1, 11):
        history.add(train(step, cpus, host_rss_bytes=2 * GiB))
    assert history.device_names == ["cpu:0", "cpu:1"]
    assert device_series(history) == []
    text = await draw(history)
    assert CPU_TITLE in text and "host RSS" in text and "cpu:0" not in text


# --------------------------------------------------------------------------- the monitor


class MonitorApp(App[None]):
    def compose(self) -> ComposeResult:
        yield RunMonitor()


def devices_label(app: App[None]) -> Label:
    return app.query_one("#monitor-devices", Label)


def test_devices_line_texts() -> None:
    last = train(3, [gpu(0, 3.1, 4.0, total=int(79.2 * GiB)), gpu(1, 3.0, 3.9, int(79.2 * GiB))])
    assert devices_line(last) == (
        "gpu:0 3.1 GiB (peak 4.0) of 79.2 · gpu:1 3.0 GiB (peak 3.9) of 79.2"
    )
    cpus = train(3, [{"device": "cpu:0"}, {"device": "cpu:1"}], host_rss_bytes=int(1.5 * GiB))
    assert devices_line(cpus) == "cpu:0 · cpu:1 · host RSS 1.5 GiB"
    no_card = train(3, [gpu(0, 1.0, 2.0, total=None), gpu(1, 1.0, 2.0, total=None)])
    assert devices_line(no_card).startswith("gpu:0 1.0 GiB (peak 2.0) of 70.0 · ")  # JAX pool
    assert devices_line(None) == ""


async def test_monitor_shows_the_devices_of_live_events(tmp_path: Path) -> None:
    app = MonitorApp()
    async with app.run_test(size=(120, 30)) as pilot:
        monitor = app.query_one(RunMonitor)
        label = devices_label(app)
        await pilot.pause()
        assert not label.display  # nothing known yet
        started = RunStarted(
            str(tmp_path / "dp"), 100, 0, "tiny", 10, 2, 256, ("gpu:0", "gpu:1"), PLACEMENT
        )
        devices = (device_memory(0, 3.1, 4.0), device_memory(1, 3.0, 3.9))
        monitor.add_events([started, step_event(1, devices, bytes_in_use=devices[0].bytes_in_use)])
        await pilot.pause()
        assert label.display and label.region.height == 1
        assert str(label.content) == (
            "gpu:0 3.1 GiB (peak 4.0) of 80.0 · gpu:1 3.0 GiB (peak 3.9) of 80.0"
        )
        assert f"devices: {PLACEMENT}" in monitor.query_one(Log).lines
        assert monitor.history.device_names == ["gpu:0", "gpu:1"]

        cpus = (DeviceMemory("cpu:0"), DeviceMemory("cpu:1"))
        monitor.add_events([step_event(2, cpus, host_rss_bytes=int(1.5 * GiB))])
        await pilot.pause()
        assert str(label.content) == "cpu:0 · cpu:1 · host RSS 1.5 GiB"

        monitor.reset("next")  # a new run: nothing known again
        monitor.add_events([step_event(1, host_rss_bytes=GiB)])  # and it lists no devices
        await pilot.pause()
        assert not label.display


async def test_monitor_without_a_placement_logs_no_devices_line(tmp_path: Path) -> None:
    app = MonitorApp()
    async with app.run_test(size=(120, 30)) as pilot:
        monitor = app.query_one(RunMonitor)
        monitor.add_events([RunStarted(str(tmp_path / "one"), 10, 0, "tiny", 10, 2, 256)])
        await pilot.pause()
        lines = monitor.query_one(Log).lines
        assert lines and not any(line.startswith("devices:") for line in lines)


async def test_monitor_shows_the_devices_of_a_followed_run(tmp_path: Path) -> None:
    run = write_run(tmp_path, "dp", status="finished", step=0, total=3, eval_every=0)
    with MetricsWriter(run / "metrics.jsonl") as out:
        for step in (1, 2, 3):
            out.write(train(step, [gpu(0, 3.0, 4.0), gpu(1, 2.0 + step, 5.0)]))
    app = MonitorApp()
    async with app.run_test(size=(120, 30)) as pilot:
        monitor = app.query_one(RunMonitor)
        monitor.follow(run)
        await pilot.pause()
        assert monitor.history.train_steps == [1, 2, 3]
        assert monitor.history.device_series["gpu:1"]["bytes_in_use"] == [
            3 * GiB,
            4 * GiB,
            5 * GiB,
        ]
        label = devices_label(app)
        assert label.display
        assert str(label.content) == (
            "gpu:0 3.0 GiB (peak 4.0) of 80.0 · gpu:1 5.0 GiB (peak 5.0) of 80.0"
        )


# --------------------------------------------------------------------------- the CLI


def test_format_memory_on_two_devices() -> None:
    devices = (device_memory(0, 3.1, 4.0), device_memory(1, 3.0, 3.9))
    event = step_event(1, devices, bytes_in_use=devices[0].bytes_in_use, peak_bytes=4 * GiB)
    assert format_memory(event) == "gpu:0 3.1/4.0 GiB, gpu:1 3.0/3.9 GiB"
    no_peak = (DeviceMemory("gpu:0", 2 * GiB), DeviceMemory("gpu:1"))
    assert format_memory(step_event(1, no_peak)) == "gpu:0 2.0 GiB"
    # one device: as before
    one = step_event(1, devices[:1], bytes_in_use=3 * GiB, peak_bytes=4 * GiB)
    assert format_memory(one) == "3.0 GiB (peak 4.0)"
    # CPU devices that report nothing: the RSS, as before
    cpus = (DeviceMemory("cpu:0"), DeviceMemory("cpu:1"))
    assert format_memory(step_event(1, cpus, host_rss_bytes=GiB)) == "RSS 1.0 GiB"


def test_printer_shows_the_placement() -> None:
    def printed(started: RunStarted) -> list[str]:
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=False, width=160, color_system=None)
        with TrainPrinter(console, live=False) as printer:
            printer(started)
        return buffer.getvalue().splitlines()

    base = RunStarted("/ws/runs/x", 8, 0, "tiny", 36, 4, 256)
    lines = printed(RunStarted("/ws/runs/x", 8, 0, "tiny", 36, 4, 256, ("gpu:0",), PLACEMENT))
    assert lines[-1] == f"  devices: {PLACEMENT}"
    assert lines[:-1] == printed(base)


def test_runs_detail_summary_names_the_devices_of_a_multi_device_run(tmp_path: Path) -> None:
    from gemma_tui.screens.runs_detail import summary_line
    from pipeline.training.runs import summarize_run

    run = write_run(tmp_path, "dp-run", status="finished", step=2, total=2)
    summary = summarize_run(run)
    history = RunHistory()
    history.add(train(1, [gpu(0, 3.0, 4.0), gpu(1, 2.9, 3.9)]))
    assert "2 devices (gpu:0, gpu:1)" in summary_line(summary, history).plain
    one = RunHistory()
    one.add(train(1, [gpu(0, 3.0, 4.0)]))
    assert "devices" not in summary_line(summary, one).plain
