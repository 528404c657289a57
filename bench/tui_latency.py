"""Key-press latency of the Train screen while a real run trains in the same process.

Starts the app headless (Textual's ``run_test``, the same event loop as in a terminal), opens
the Train screen, picks a profile and a dataset and presses F5: the real trainer runs in the
screen's thread worker. Once the first step has finished (the compile is done, so the time
is spent in steps), it presses F2 (show/hide the setup) every ``--every`` seconds and
measures the time until the screen has changed, until the run ends. Reports p50, p95 and the
maximum, and the messages the event bridge posted against the events it got.

Run: ``uv run python bench/tui_latency.py [--profile cpu-smoke] [--data FILE]``.
Writes bench/results/tui_latency.md. The goal: every key answered within 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "tui_latency.md"
sys.path.insert(0, str(REPO))


def save_screen(app: object, folder: Path | None, name: str) -> None:
    """The screen as an SVG (Textual's export) in ``folder``, when given."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.svg").write_text(app.export_screenshot())  # type: ignore[attr-defined]


async def measure(
    profile: str,
    data: str,
    every: float,
    fields: dict[str, str],
    screens: Path | None,
    size: tuple[int, int],
    timeout: float = 300.0,
) -> dict[str, object]:
    from textual.widgets import Select

    from gemma_tui.app import GemmaTuiApp
    from gemma_tui.screens.modals import ErrorModal
    from gemma_tui.screens.train import TrainScreen
    from gemma_tui.widgets.job_bar import JobBar

    app = GemmaTuiApp()
    latencies: list[float] = []
    async with app.run_test(size=size) as pilot:
        await pilot.press("2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        screen.query_one("#profile-select", Select).value = profile
        while screen.form.profile is None or screen.form.profile.name != profile:
            await asyncio.sleep(0.01)
        screen.form.set_value("data.train_path", data)
        for key, value in fields.items():
            screen.form.set_value(key, value)
        await pilot.pause()
        if screen.form.profile is None:
            raise SystemExit("bad --set values: " + "; ".join(screen.form.problems))
        save_screen(app, screens, "train-setup")
        setup = screen.query_one("#setup")

        async def press_f2() -> float:
            """Seconds from F2 to the profile pane shown or hidden (5 s at most)."""
            before = setup.display
            t0 = time.perf_counter()
            app.simulate_key("f2")
            while setup.display == before:
                await asyncio.sleep(0.001)
                if time.perf_counter() - t0 > 5:
                    print("no answer in 5 s; screen:", app.screen, "busy:", screen.busy)
                    break
            return time.perf_counter() - t0

        idle: list[float] = []
        for _ in range(10):  # the same key with nothing training, for comparison
            idle.append(await press_f2())
            await asyncio.sleep(every)
        if not setup.display:
            app.simulate_key("f2")
            await pilot.pause()
        started = time.perf_counter()
        app.simulate_key("f5")
        monitor = screen.monitor
        last_note = 0.0
        while not monitor.history.train_steps:
            await asyncio.sleep(0.05)
            waited = time.perf_counter() - started
            if isinstance(app.screen, ErrorModal) or not (screen.busy or waited < 5):
                save_screen(app, screens, "train-error")
                report = getattr(app.screen, "report", None)
                raise SystemExit(f"the run did not start: {report or monitor.state}")
            if waited > timeout:
                save_screen(app, screens, "train-timeout")
                raise SystemExit(f"no step after {timeout:.0f} s; state {monitor.state!r}")
            if waited - last_note > 10:
                last_note = waited
                bar = screen.query_one(JobBar)
                detail = str(bar.query_one("#job-detail").render())
                print(f"{waited:5.0f} s  waiting for the first step: {detail}", flush=True)
        first_step = time.perf_counter() - started
        shot_at = max(2, (screen.form.profile.train.max_steps or 8) // 2)
        profiler = None
        if os.environ.get("LATENCY_PROFILE"):  # what the UI thread does while the run goes
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        while screen.busy:
            if time.perf_counter() - started > timeout:
                print("time is up: stopping the run", flush=True)
                screen.stop_run()
                timeout = float("inf")
            if screens is not None and len(monitor.history.train_steps) >= shot_at:
                shot_at = 10**9
                save_screen(app, screens, "train-running")
            pressed_at = time.perf_counter() - started
            latencies.append(await press_f2())
            if os.environ.get("LATENCY_TRACE"):
                print(
                    f"{pressed_at:7.2f} s  steps {len(monitor.history.train_steps)}  "
                    f"{latencies[-1] * 1000:6.1f} ms"
                )
            await asyncio.sleep(every)
        if profiler is not None:
            import io
            import pstats

            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
            Path(os.environ["LATENCY_PROFILE"]).write_text(text.getvalue())
        steps = len(monitor.history.train_steps)
        total = time.perf_counter() - started
        await pilot.pause(0.5)
        if setup.display:
            app.simulate_key("f2")
            await pilot.pause(0.3)
        save_screen(app, screens, "train-finished")
        last = dict(monitor.history.last_train or {})
    return {
        "latencies": latencies,
        "idle": idle,
        "steps": steps,
        "first_step_s": first_step,
        "total_s": total,
        "last": last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-smoke")
    parser.add_argument("--data", default="pipeline/data/samples/sample_sharegpt.jsonl")
    parser.add_argument("--every", type=float, default=0.3, help="seconds between presses")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="type VALUE into the profile field KEY (e.g. train.max_steps=40)",
    )
    parser.add_argument("--screens", type=Path, help="save SVG screens of the run here")
    parser.add_argument("--size", default="120x36", help="terminal size, COLSxROWS")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the run")
    args = parser.parse_args()
    fields = dict(item.split("=", 1) for item in args.set)
    cols, rows = (int(x) for x in args.size.split("x"))
    os.chdir(REPO)
    os.environ.setdefault("GEMMA_TUI_WORKSPACE", tempfile.mkdtemp(prefix="tui-latency-"))
    out = asyncio.run(
        measure(
            args.profile, args.data, args.every, fields, args.screens, (cols, rows), args.timeout
        )
    )
    lat = sorted(out["latencies"])  # type: ignore[arg-type]
    ms = [x * 1000 for x in lat]
    idle_ms = sorted(x * 1000 for x in out["idle"])  # type: ignore[attr-defined]
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    cpu = f"{os.cpu_count()} cores"
    try:
        from pipeline.utils.gpu import nvml_memory

        card = nvml_memory()
        if card is not None:
            import pynvml

            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            cpu += f", GPU {name} ({card[1] / 1024**3:.0f} GiB)"
    except Exception:
        pass
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "# Train screen: key latency while training in the same process",
        "",
        f"- Command: `{os.environ.get('TUI_COMMAND') or ' '.join(['python', *sys.argv])}`",
        f"- Machine: {platform.node()}, {platform.machine()}, {cpu}, Python "
        f"{platform.python_version()}; date {when}",
        f"- Run: {out['steps']} steps, first step after {out['first_step_s']:.1f} s "
        f"(model load, data, compile), {out['total_s']:.1f} s in all",
        f"- F2 pressed every {args.every} s after the first step: {len(ms)} presses",
        f"- Last step: {json.dumps(out['last'], default=str)}",
        "",
        "Latency: from the key event to the screen's action having run (F2 shows or hides "
        "the profile pane).",
        "",
        "| while | presses | p50 ms | p95 ms | max ms | goal |",
        "|---|---:|---:|---:|---:|---|",
        f"| idle (no run) | {len(idle_ms)} | {statistics.median(idle_ms):.1f} | "
        f"{idle_ms[max(0, round(0.95 * len(idle_ms)) - 1)]:.1f} | {max(idle_ms):.1f} | |",
        f"| training in process | {len(ms)} | {statistics.median(ms):.1f} | {p95:.1f} | "
        f"{max(ms):.1f} | < 100 ms each |",
        "",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
