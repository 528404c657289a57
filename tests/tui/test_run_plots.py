"""RunHistory (metrics records and events -> series) and the throttled loss and memory plots."""

from __future__ import annotations

import math
from pathlib import Path

from textual.app import App, ComposeResult
from textual.containers import Vertical

from gemma_tui.widgets.run_plots import (
    CPU_TITLE,
    GPU_TITLE,
    MAX_POINTS,
    LossPlot,
    MemoryPlot,
    RunHistory,
    finite_points,
    thin,
)
from pipeline.events import EvalMetrics, StepMetrics
from pipeline.training.runs import MetricsWriter, read_metrics

GiB = 1024**3


def train(step: int, loss: float = 1.0, **extra: object) -> dict[str, object]:
    return {"type": "train", "step": step, "loss": loss, "lr": 1e-4, **extra}


def evaluation(step: int, loss: float) -> dict[str, object]:
    return {"type": "eval", "step": step, "loss": loss, "tokens": 10, "seconds": 0.1}


def step_event(step: int, loss: float, **memory: int | None) -> StepMetrics:
    return StepMetrics(
        step=step,
        total_steps=100,
        loss=loss,
        learning_rate=2e-4,
        grad_norm=1.0,
        tokens_per_s=1000.0,
        trained_tokens=100,
        elapsed_s=1.0,
        eta_s=10.0,
        **memory,
    )


# --------------------------------------------------------------------------- RunHistory


def test_history_from_a_metrics_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as out:
        for step in range(1, 6):
            out.write(train(step, 2.0 - step / 10, host_rss_bytes=GiB * step, tokens_per_s=500))
        out.write(evaluation(5, 1.7))
    history = RunHistory("run-a")
    history.extend(read_metrics(path))

    assert history.label == "run-a"
    assert history.train_steps == [1, 2, 3, 4, 5]
    assert history.train_loss == [1.9, 1.8, 1.7, 1.6, 1.5]
    assert history.learning_rate == [1e-4] * 5  # metrics.jsonl writes "lr"
    assert history.tokens_per_s == [500.0] * 5
    assert history.host_rss_bytes == [GiB * s for s in range(1, 6)]
    assert history.bytes_in_use == [None] * 5
    assert history.eval_steps == [5] and history.eval_loss == [1.7]
    assert history.best_eval == 1.7
    assert not history.has_gpu
    assert history.last_train is not None and history.last_train["step"] == 5
    assert history.version == 6


def test_events_give_the_same_history_as_records() -> None:
    from_events = RunHistory()
    from_records = RunHistory()
    memory = {"bytes_in_use": 3 * GiB, "peak_bytes": 4 * GiB, "gpu_total_bytes": 24 * GiB}
    for step in (1, 2):
        from_events.add_event(step_event(step, 1.0 / step, **memory))
        from_records.add({"type": "train", "step": step, "loss": 1.0 / step, **memory})
    from_events.add_event(EvalMetrics(step=2, loss=0.9, tokens=5, seconds=0.1))
    from_records.add(evaluation(2, 0.9))

    for name in ("train_steps", "train_loss", "bytes_in_use", "peak_bytes", "gpu_total_bytes"):
        assert getattr(from_events, name) == getattr(from_records, name), name
    assert from_events.eval_loss == from_records.eval_loss == [0.9]
    assert from_events.learning_rate == [2e-4, 2e-4]
    assert from_events.has_gpu and from_records.has_gpu
    assert from_events.last_train is not None and from_events.last_train["total_steps"] == 100


def test_a_resumed_run_writes_each_step_once() -> None:
    history = RunHistory()
    history.extend(train(s, loss=1.0) for s in range(1, 11))
    history.extend([evaluation(5, 0.8), evaluation(10, 0.5)])
    # Resumed from the checkpoint at step 5: steps 6.. are written again.
    history.extend(train(s, loss=2.0) for s in range(6, 9))

    assert history.train_steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert history.train_loss == [1.0] * 5 + [2.0] * 3
    assert len(history.host_rss_bytes) == len(history.train_steps)
    assert history.eval_steps == [5]  # the eval of the abandoned step 10 is gone
    assert history.best_eval == 0.8
    assert history.last_train is not None and history.last_train["step"] == 8

    history.add(evaluation(5, 0.7))  # an eval written again replaces the old one
    assert history.eval_steps == [5] and history.eval_loss == [0.7]


def test_non_finite_losses_are_kept_but_not_drawn() -> None:
    history = RunHistory()
    history.extend([train(1, 1.0), train(2, math.nan), train(3, math.inf), train(4, 0.5)])
    history.extend([evaluation(2, math.nan), evaluation(4, 0.6)])
    history.add({"type": "train", "step": 5, "loss": None})
    history.add({"type": "train", "step": "oops"})  # no usable step: ignored
    history.add({"type": "checkpoint", "step": 5})  # other kinds: ignored

    assert history.train_steps == [1, 2, 3, 4, 5]
    assert history.best_eval == 0.6
    xs, ys = finite_points(history.train_steps, history.train_loss)
    assert xs == [1.0, 4.0] and ys == [1.0, 0.5]


def test_thinning_keeps_the_ends_and_the_limit() -> None:
    assert thin(5) == [0, 1, 2, 3, 4]
    kept = thin(10_001)
    assert kept[0] == 0 and kept[-1] == 10_000
    assert len(kept) <= MAX_POINTS + 1
    assert kept == sorted(set(kept))


# --------------------------------------------------------------------------- plots


class PlotApp(App[None]):
    def compose(self) -> ComposeResult:
        with Vertical():
            yield LossPlot(id="loss")
            yield MemoryPlot(id="memory")


def drawn(plot: LossPlot | MemoryPlot) -> str:
    return plot.render().plain  # type: ignore[union-attr]


async def test_empty_plots_say_so() -> None:
    app = PlotApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        loss, memory = app.query_one(LossPlot), app.query_one(MemoryPlot)
        assert "Loss: no run" in drawn(loss)
        assert "Memory: no steps yet" in drawn(memory)
        loss.show([RunHistory("a")])
        memory.show(RunHistory("a"))
        loss.flush()
        memory.flush()
        assert "Loss: no steps yet" in drawn(loss)
        assert "Memory: no steps yet" in drawn(memory)


async def test_one_run_on_a_gpu() -> None:
    history = RunHistory("run-a")
    for step in range(1, 51):
        history.add(
            train(
                step,
                2.0 / step,
                bytes_in_use=5 * GiB,
                peak_bytes=7 * GiB,
                gpu_used_bytes=18 * GiB,
                gpu_total_bytes=24 * GiB,
            )
        )
    history.add(evaluation(50, 0.25))
    app = PlotApp()
    async with app.run_test(size=(100, 40)) as pilot:
        loss, memory = app.query_one(LossPlot), app.query_one(MemoryPlot)
        loss.show([history])
        memory.show(history)
        # the timer draws (no flush here); on a loaded machine a slow first drawing makes it
        # wait BUSY_FACTOR times longer, so allow a few seconds
        for _ in range(50):
            await pilot.pause(0.1)
            if not loss.pending and not memory.pending:
                break
        text = drawn(loss)
        assert "train loss" in text and "eval loss" in text
        assert "best eval 0.2500" in text and "step" in text
        text = drawn(memory)
        assert GPU_TITLE in text
        for label in (
            "JAX in use (this process)",
            "JAX peak (this process)",
            "NVML used (whole card)",
            "card total",
        ):
            assert label in text


async def test_overlay_and_cpu_memory() -> None:
    first, second = RunHistory("first-run"), RunHistory("second-run")
    for step in range(1, 21):
        first.add(train(step, 3.0 / step, host_rss_bytes=2 * GiB))
        second.add(train(step, 2.0 / step, host_rss_bytes=3 * GiB))
    second.add(evaluation(20, 0.3))
    app = PlotApp()
    async with app.run_test(size=(100, 40)) as pilot:
        loss, memory = app.query_one(LossPlot), app.query_one(MemoryPlot)
        loss.show([first, second])
        memory.show(first)
        loss.flush()
        memory.flush()
        await pilot.pause()
        text = drawn(loss)
        assert "Loss of 2 runs" in text
        assert "first-run" in text and "second-run" in text and "second-run eval" in text
        text = drawn(memory)
        assert CPU_TITLE in text and "host RSS" in text


async def test_redraws_are_throttled_and_every_point_kept() -> None:
    history = RunHistory("fast")
    app = PlotApp()
    async with app.run_test(size=(100, 40)) as pilot:
        loss = app.query_one(LossPlot)
        memory = app.query_one(MemoryPlot)
        await pilot.pause()
        before = loss.redraws, memory.redraws
        # 5,000 events in bursts over about 1 s, each followed by show(): at 4 Hz that is a
        # handful of redraws, not thousands.
        for burst in range(10):
            for i in range(500):
                history.add_event(step_event(burst * 500 + i + 1, 1.0, host_rss_bytes=GiB))
                loss.show([history])
                memory.show(history)
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        loss_redraws = loss.redraws - before[0]
        memory_redraws = memory.redraws - before[1]
        assert 1 <= loss_redraws <= 8, loss_redraws
        assert 1 <= memory_redraws <= 8, memory_redraws
        assert not loss.pending and not memory.pending  # the last state is drawn
        assert len(history.train_steps) == 5000
        assert "5,000" in drawn(loss)  # the x axis reaches the last step

        # Nothing changed: the timer does not redraw.
        quiet = loss.redraws
        await pilot.pause(0.6)
        assert loss.redraws == quiet
