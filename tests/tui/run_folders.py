"""Run folders for the Runs screen tests, written for real with ``pipeline.training.runs``
(run.json, metrics.jsonl, log.txt, profile.toml) and ``pipeline.training.checkpoint``
(checkpoints of a tiny adapter). Metrics are scripted (no JAX); times are relative to now so
that ages and durations show the same text on every run of the tests."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from pipeline.training.runs import (
    LOG_TXT,
    PROFILE_TOML,
    MetricsWriter,
    RunRecord,
    RunStatus,
    write_run_record,
)
from tests.conftest import REPO

GiB = 1024**3
PROFILE = REPO / "profiles" / "cpu-smoke.toml"
MODEL = "Gemma 3 270M (embedded, pretrained)"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def loss_at(step: int, offset: float = 0.0) -> float:
    """A loss curve that falls from about 3 to 0.6, with a small wiggle (deterministic)."""
    return 2.4 * math.exp(-step / 40) + 0.6 + offset + 0.04 * math.sin(step * 1.7)


def train_row(step: int, total: int, *, offset: float = 0.0, gpu: bool = False) -> dict:
    row: dict[str, object] = {
        "type": "train",
        "step": step,
        "total_steps": total,
        "loss": loss_at(step, offset),
        "lr": 2e-4,
        "grad_norm": 1.0,
        "tokens_per_s": 5000.0,
        "trained_tokens": 900,
        "host_rss_bytes": 3 * GiB + step * 2_000_000,
    }
    if gpu:
        row |= {
            "bytes_in_use": 5 * GiB + (step % 7) * 50_000_000,
            "peak_bytes": 8 * GiB,
            "gpu_used_bytes": 18 * GiB,
            "gpu_total_bytes": 24 * GiB,
        }
    return row


def eval_row(step: int, *, offset: float = 0.0) -> dict:
    return {"type": "eval", "step": step, "loss": loss_at(step, offset) + 0.1, "tokens": 500}


def dead_pid() -> int:
    """The pid of a process that has ended (for a run whose process is gone)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_checkpoint(run_dir: Path, step: int, *, final: bool = False) -> Path:
    """A real checkpoint of a tiny adapter (what the trainer writes, at toy size)."""
    from pipeline.models.config import ARCH_TINY
    from pipeline.models.lora import AdapterMeta, init_adapter
    from pipeline.profiles import load_profile
    from pipeline.training.checkpoint import save_checkpoint

    meta = AdapterMeta(rank=2, alpha=4.0, targets=("q", "v"), arch=ARCH_TINY)
    adapter = init_adapter(meta, 0)
    return save_checkpoint(
        run_dir,
        step,
        adapter=adapter,
        meta=meta,
        opt_state={"mu": adapter, "count": step},
        state={"data": {"epoch": 0, "position": step * 2}},
        profile=load_profile("cpu-smoke"),
        final=final,
    )


def write_run(
    workspace: Path,
    name: str,
    *,
    status: RunStatus = "finished",
    step: int = 40,
    total: int = 40,
    days_ago: float = 3.0,
    duration_s: float = 3600.0,
    gpu: bool = False,
    offset: float = 0.0,
    eval_every: int = 10,
    checkpoints: Sequence[int] = (),
    final: bool = False,
    pid: int | None = None,
    error: str | None = None,
    log: Sequence[str] = (),
    profile: str = "cpu-smoke",
    model: str = MODEL,
) -> Path:
    """A run folder ``<workspace>/runs/<name>`` with ``step`` train rows, an eval every
    ``eval_every`` steps, the given checkpoints, a log and a run.json."""
    run_dir = workspace / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / PROFILE_TOML).write_text(PROFILE.read_text(encoding="utf-8"), encoding="utf-8")
    with MetricsWriter(run_dir / "metrics.jsonl") as out:
        for s in range(1, step + 1):
            out.write(train_row(s, total, offset=offset, gpu=gpu))
            if eval_every and s % eval_every == 0:
                out.write(eval_row(s, offset=offset))
    lines = list(log) or [f"step {s}: loss {loss_at(s, offset):.4f}" for s in range(1, step + 1)]
    (run_dir / LOG_TXT).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    for s in checkpoints:
        write_checkpoint(run_dir, s)
    if final:
        write_checkpoint(run_dir, step, final=True)
    started = datetime.now().astimezone() - timedelta(days=days_ago)
    evals = [loss_at(s, offset) + 0.1 for s in range(eval_every, step + 1, eval_every or 1)]
    record = RunRecord(
        status=status,
        started=iso(started),
        updated=iso(started + timedelta(seconds=duration_s)),
        profile=profile,
        model=model,
        data="data/chat.jsonl",
        total_steps=total,
        step=step,
        best_eval_loss=min(evals) if eval_every and evals else None,
        error=error,
        pid=os.getpid() if pid is None else pid,
    )
    write_run_record(run_dir, record)
    return run_dir
