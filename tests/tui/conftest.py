"""Helpers for the TUI tests: run from the repository root so paths shown are relative."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot

from gemma_tui.screens.dataset import DatasetScreen
from tests.conftest import REPO

SHAREGPT_SAMPLE = "pipeline/data/samples/sample_sharegpt.jsonl"
TERMINAL_SIZE = (130, 38)


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every TUI test runs in the repository root; relative sample paths then work."""
    monkeypatch.chdir(REPO)
    yield REPO


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private workspace for jobs that write (outputs default to its datasets folder)."""
    root = tmp_path / "workspace"
    root.mkdir()
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(root))
    return root


async def settle(pilot: Pilot[object], *, timeout: float = 60.0) -> None:
    """Wait until no worker runs and the screen has processed what they posted."""
    import asyncio

    app = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await pilot.pause()
        if not any(worker.is_running for worker in app.workers):
            await pilot.pause()
            if not any(worker.is_running for worker in app.workers):
                return
        if loop.time() > deadline:
            raise TimeoutError("workers still running")
        await asyncio.sleep(0.02)


async def wait_until(done: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Poll ``done()`` every 10 ms without waiting for the screen to go idle."""
    import asyncio
    import time

    started = time.perf_counter()
    while not done():
        await asyncio.sleep(0.01)
        if time.perf_counter() - started > timeout:
            raise TimeoutError("condition not reached")


async def key_latency(app: App[Any], key: str, done: Callable[[], bool]) -> float:
    """Seconds from a key press to ``done()``, polled every 10 ms.

    ``Pilot.press`` waits for the whole process to go idle (up to 1 s, twice), which never
    happens while a worker thread computes; this measures what the user feels instead.
    """
    import asyncio
    import time

    started = time.perf_counter()
    app.simulate_key(key)
    while not done():
        await asyncio.sleep(0.01)
        if time.perf_counter() - started > 10:
            raise TimeoutError(f"key {key!r} not handled")
    return time.perf_counter() - started


def dataset_screen(pilot: Pilot[object]) -> DatasetScreen:
    for screen in pilot.app.screen_stack:
        if isinstance(screen, DatasetScreen):
            return screen
    raise AssertionError("no Dataset screen")


def write_sharegpt_jsonl(path: Path, rows: int, *, bad: set[int] | None = None) -> Path:
    """``rows`` ShareGPT records; those in ``bad`` have an unknown role (invalid)."""
    bad = bad or set()
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            role = "robot" if i in bad else "gpt"
            record = {
                "conversations": [
                    {"from": "human", "value": f"Question number {i}: what is {i} + {i}?"},
                    {"from": role, "value": f"The answer is {i + i}."},
                ]
            }
            f.write(json.dumps(record) + "\n")
    return path
