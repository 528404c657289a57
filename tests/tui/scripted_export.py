"""A scripted export for the TUI tests: ``export_run``'s signature and events, no converter.

It resolves the source with the pipeline's own :func:`~pipeline.export.job.resolve_source`
(so a damaged or missing checkpoint fails as it would), then emits the events the real
export emits, in its order (observed on a real tiny export): a log line, ``StageStarted``
and ``StageDone`` per stage with the loader's sub-stages inside ``merge``, prompt progress
in ``reference`` and the worker's ``Progress(stage, seconds, None, "s")`` ticks in
``convert``; finally ``StageDone("export")``. It honours ``should_stop`` between stages (and
while held) by raising :class:`~pipeline.errors.JobCancelled` and writing nothing, like the
real one. A finished export is a folder with (small) bundle files and ``verify.md`` written
from a report computed by :mod:`pipeline.export.verify` on scripted token ids.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ExportError, JobCancelled
from pipeline.events import (
    EventSink,
    LogLine,
    Progress,
    StageDone,
    StageStarted,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.export.job import (
    VERIFY_MD,
    ExportOptions,
    ExportResult,
    check_options,
    export_name,
    resolve_source,
)
from pipeline.export.verify import (
    Reference,
    VerifyReport,
    build_report,
    engine_report,
    interpreter_report,
    report_markdown,
)
from pipeline.workspace import Workspace

SECONDS = {
    "tools": 0.03,
    "merge": 5.16,
    "reference": 6.38,
    "checkpoint": 0.29,
    "converter": 7.1,
    "load": 0.21,
    "convert": 25.8,
    "bundle_task": 0.16,
    "bundle_litertlm": 0.02,
    "verify_task": 0.49,
    "verify_task_engine": 0.64,
    "verify_litertlm_engine": 0.64,
    "verify_tflite": 0.5,
    "verify": 0.09,
}
"""Stage seconds of a real tiny export on 2 cores, fixed so pictures are deterministic."""
BUNDLE_BYTES = {"task": 41_000, "litertlm": 42_000, "tflite": 35_000}
"""The sizes of the scripted bundle files (zeros)."""
PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")


def _decode(ids: Any) -> str:
    return "".join(chr(97 + int(i) % 26) for i in ids)


def _encode(text: str) -> list[int]:
    return [ord(c) - 97 for c in text]


def scripted_report(options: ExportOptions, *, passed: bool) -> VerifyReport:
    """A verification report computed by the pipeline on scripted ids (what the worker
    reports, shaped as in ``job._report``): identical replies when ``passed``, else the
    interpreter drifts after two tokens and LiteRT-LM follows it."""
    refs = [
        Reference(prompt, (2, 10 + n), tuple(range(10 + n, 16 + n)), 106)
        for n, prompt in enumerate(PROMPTS)
    ]
    if passed:
        runs = [{"ids": list(r.ids), "stopped": 106, "forced": [*r.ids, 106]} for r in refs]
    else:
        drift = [3, 3, 3, 3, 3, 3]
        runs = [
            {"ids": [*r.ids[:2], *drift], "stopped": None, "forced": [*r.ids[:2], *drift, 3]}
            for r in refs
        ]
    bundles = [f for f in ("task", "litertlm") if f in options.formats]
    interpreter = interpreter_report(
        "task" if "task" in bundles else "tflite", refs, runs,
        threshold=options.threshold, max_new_tokens=options.max_new_tokens, decode=_decode,
    )  # fmt: skip
    runtimes = [interpreter]
    for fmt in bundles:
        texts = [{"text": _decode(run["ids"])} for run in runs]
        runtimes.append(
            engine_report(
                fmt, refs, texts, interpreter,
                threshold=options.threshold, encode=_encode, decode=_decode,
            )
        )  # fmt: skip
    return build_report(options.quant, options.threshold, options.max_new_tokens, runtimes)


def stages_of(options: ExportOptions) -> list[str]:
    """The stages ``export_run`` goes through (checked against a real export in
    tests/pipeline/test_export.py)."""
    from pipeline.export.job import planned_stages

    return planned_stages(options)


@dataclass
class ScriptedExport:
    """``export_run(run, *, checkpoint, options, workspace, on_event, should_stop)``."""

    stage_seconds: float = 0.0
    """Real time spent in each stage."""
    hold_at: str | None = None
    """Wait in this stage (after its start) until :attr:`release` is set or a stop is asked."""
    fail_at: str | None = None
    """This stage fails like the converter does (an ExportError with a hint)."""
    passed: bool = True
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    calls: list[dict[str, Any]] = field(default_factory=list)
    stop_checks: int = 0
    stopped: bool = False
    """``should_stop`` said yes and the export was cancelled."""

    def __call__(
        self,
        run: str | Path,
        *,
        checkpoint: int | str | None = None,
        options: ExportOptions | None = None,
        workspace: Workspace | None = None,
        out_dir: str | Path | None = None,
        on_event: EventSink = ignore_event,
        should_stop: StopCheck = never_stop,
    ) -> ExportResult:
        opts = check_options(options or ExportOptions())
        ws = workspace or Workspace.default()
        self.calls.append({"run": Path(run), "checkpoint": checkpoint, "options": opts})
        source = resolve_source(run, checkpoint, ws)
        name = export_name(source, opts.quant)
        final = Path(out_dir) if out_dir is not None else ws.exports_dir / name

        def stop() -> bool:
            self.stop_checks += 1
            if should_stop():
                self.stopped = True
                return True
            return False

        on_event(LogLine(f"Exporting {source.checkpoint} ({opts.quant}) to {final}"))
        for stage in stages_of(opts):
            if stop():
                raise JobCancelled(f"export cancelled before {stage}")
            on_event(StageStarted(stage, f"scripted {stage}"))
            if stage == "merge":
                on_event(LogLine("Loading the scripted base model as float32"))
                on_event(StageDone("model", "scripted Gemma 3 270M; float32", 0.5))
            elif stage == "reference":
                for i in range(len(PROMPTS)):
                    on_event(Progress("reference", i + 1, len(PROMPTS), "prompts"))
            elif stage == "convert":
                for second in range(1, 4):
                    on_event(Progress("convert", second, None, "s"))
            if stage == self.hold_at:
                self.holding.set()
                while not self.release.wait(0.01):
                    if stop():
                        raise JobCancelled("export cancelled; the converter was stopped")
            time.sleep(self.stage_seconds)
            if stage == self.fail_at:
                raise ExportError(
                    f"the {stage} stage failed: RuntimeError: scripted failure",
                    hint=f"The converter's full output is in {name}.failed.log (kept beside "
                    "the exports).",
                )
            on_event(StageDone(stage, f"scripted {stage} done", SECONDS[stage]))
        report = scripted_report(opts, passed=self.passed) if opts.verify else None
        final.mkdir(parents=True, exist_ok=opts.force)
        files: dict[str, int] = {}
        for fmt in opts.formats:
            path = final / f"{name}.{fmt}"
            path.write_bytes(b"\0" * BUNDLE_BYTES[fmt])
            files[path.name] = path.stat().st_size
        if report is not None:
            (final / VERIFY_MD).write_text(report_markdown(report), encoding="utf-8")
        status = "ok" if report is None or report.passed else "failed"
        stages = {s: SECONDS[s] for s in stages_of(opts)}
        seconds = round(sum(stages.values()), 2)
        on_event(StageDone("export", f"{final} {status}", seconds))
        return ExportResult(final, status, files, report, {}, seconds, stages)


@dataclass
class ScriptedReplies:
    """``bundle_replies(bundle, texts, *, max_new_tokens, workspace, ...)``: a fixed reply."""

    reply: str = "Paris is the capital of France."
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self,
        bundle: str | Path,
        texts: list[str],
        *,
        max_new_tokens: int = 128,
        workspace: Workspace | None = None,
        on_event: EventSink = ignore_event,
        should_stop: StopCheck = never_stop,
    ) -> list[str]:
        self.calls.append({"bundle": Path(bundle), "texts": list(texts), "max": max_new_tokens})
        on_event(StageStarted("generate", Path(bundle).name))
        on_event(StageDone("generate", "generate", 0.1))
        return [f"{self.reply} ({Path(bundle).suffix})" for _ in texts]


@dataclass
class ScriptedEnvCreation:
    """``create_export_env(*, on_event, should_stop)``: the installer's steps as log lines."""

    python: Path
    calls: int = 0

    def __call__(
        self, *, on_event: EventSink = ignore_event, should_stop: StopCheck = never_stop
    ) -> Path:
        self.calls += 1
        on_event(LogLine("Creating the export environment (scripted)"))
        for step in ("creating the venv", "installing torch (CPU)", "installing litert-torch"):
            if should_stop():
                raise JobCancelled("creating the export environment was cancelled")
            on_event(LogLine(step))
        on_event(StageDone("export-env", "export environment ready (scripted)", 1.5))
        return self.python
