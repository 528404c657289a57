"""The LiteRT chat backend: an exported bundle on the CPU, through a long-lived worker process
in the export environment (:mod:`.litert_worker`), because LiteRT-LM and ``ai_edge_litert``
are not installed in the main one.

``open_bundle(path)`` checks the file (zip safety and members of a ``.task``, the magic of a
``.litertlm`` or ``.tflite``), starts the worker, waits for it to load the model, and returns
a :class:`LiteRTBackend`. The worker streams text back while it generates; ``should_stop``
sends it a stop command (it finishes the current token). If the worker dies (killed, out of
memory), the error says so and the next message starts a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ChatError, PipelineError
from pipeline.events import StopCheck, never_stop
from pipeline.inference.chat import GenDelta, GenDone, Sampling

Runtime = Literal["litert_lm", "interpreter"]
MARK = "@@gemma-tui-chat@@ "
DEFAULT_KV = 1280
"""The KV-cache length of an export whose manifest does not say (ExportOptions' default)."""
START_TIMEOUT_S = 600.0


def _check_file(path: Path, runtime: Runtime) -> None:
    from pipeline.export.bundle import TFLITE_MAGIC, check_litertlm, check_task

    if not path.is_file():
        raise ChatError(f"{path} does not exist", hint="Check the path (`gemma-tui exports`).")
    try:
        if path.suffix == ".task":
            check_task(path)
        elif path.suffix == ".litertlm":
            if runtime == "interpreter":
                raise ChatError(
                    "a .litertlm runs on LiteRT-LM only",
                    hint="Drop --runtime interpreter, or pick the export's .task or .tflite.",
                )
            check_litertlm(path)
        elif path.suffix == ".tflite":
            with open(path, "rb") as f:
                head = f.read(8)
            if head[4:8] != TFLITE_MAGIC:
                raise ChatError(f"{path} is not a TFLite model (no TFL3 identifier)")
            if runtime == "litert_lm":
                raise ChatError(
                    "a bare .tflite runs on the interpreter only",
                    hint="Drop --runtime litert_lm, or pick the export's .task or .litertlm.",
                )
        else:
            raise ChatError(f"{path} is not a .task, .litertlm or .tflite bundle")
    except ChatError:
        raise
    except PipelineError as exc:
        raise ChatError(exc.message, hint=exc.hint) from exc
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _manifest_kv(path: Path) -> int | None:
    m = path.parent / "manifest.json"
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
        return int(data["kv_cache_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tflite_tokenizer(path: Path) -> Path | None:
    """The tokenizer for a bare ``.tflite``: the export's ``.task`` beside it, or a
    ``tokenizer.model`` there."""
    for candidate in [path.with_suffix(".task"), *sorted(path.parent.glob("*.task"))]:
        if candidate.is_file():
            return candidate
    tok = path.parent / "tokenizer.model"
    return tok if tok.is_file() else None


class LiteRTBackend:
    """A bundle served by the chat worker. Build it with :func:`open_bundle`."""

    def __init__(
        self,
        path: Path,
        runtime: Runtime,
        *,
        threads: int = 2,
        context_length: int | None = None,
        tokenizer: Path | None = None,
        label: str | None = None,
    ) -> None:
        self.path = path
        self.kind = runtime
        self.threads = threads
        self.tokenizer = tokenizer
        self.wanted_context = context_length
        self.context_length = context_length or _manifest_kv(path) or DEFAULT_KV
        runtime_name = "LiteRT-LM" if runtime == "litert_lm" else "TFLite interpreter"
        self.label = f"{label or path.name} · {runtime_name} on CPU ({threads} threads)"
        self.proc: subprocess.Popen[str] | None = None
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        # the worker's stderr (LiteRT's logging is chatty): read back for error messages
        self.log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._ids = 0
        self._counts: dict[str, int] = {}

    # ---- the process

    def start(self, should_stop: StopCheck = never_stop) -> None:
        from pipeline.export.env import require_export_env, worker_environ

        try:
            env = require_export_env()
        except PipelineError as exc:
            raise ChatError(exc.message, hint=exc.hint) from exc
        cfg = {
            "path": str(self.path),
            "runtime": self.kind,
            "threads": self.threads,
            "context": self.context_length,
            "tokenizer": str(self.tokenizer) if self.tokenizer else None,
            "cache_dir": str(Path(tempfile.gettempdir()) / f"gemma-tui-lm-cache-{os.getuid()}"),
        }
        self.events = queue.Queue()
        self.proc = subprocess.Popen(
            [str(env.python), "-m", "pipeline.inference.litert_worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            errors="replace",
            env=worker_environ(),
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self.proc, self.events), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ev = self._next(should_stop, deadline, cancel_kills=True)
            if ev["event"] == "ready":
                ctx = int(ev["context"])
                if self.wanted_context and self.wanted_context > ctx:
                    self.close()
                    raise ChatError(
                        f"{self.path.name} was exported with a KV cache of {ctx} tokens; a "
                        f"context of {self.wanted_context} does not fit",
                        hint=f"Use a context of at most {ctx}, or export with a larger --kv-cache.",
                    )
                self.context_length = min(ctx, self.wanted_context or ctx)
                return
            if ev["event"] == "error":
                self.close()
                raise ChatError(str(ev["message"]), hint=ev.get("hint"))

    @staticmethod
    def _pump(proc: subprocess.Popen[str], out: queue.Queue[dict[str, Any] | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARK):
                with contextlib.suppress(ValueError):
                    out.put(json.loads(line[len(MARK) :]))
        out.put(None)

    def _stderr_tail(self, lines: int = 3) -> str:
        try:
            self.log.seek(0)
            text = self.log.read()
        except (OSError, ValueError):
            return ""
        useful = [
            ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("I0", "W0", "INFO"))
        ]
        return " | ".join(useful[-lines:])

    def _died(self) -> ChatError:
        code = self.proc.wait() if self.proc is not None else None
        self.proc = None
        how = f"exit code {code}"
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += " (out of memory?)"
        tail = self._stderr_tail()
        return ChatError(
            f"the LiteRT worker for {self.path.name} stopped ({how})"
            + (f": {tail}" if tail else ""),
            hint="Send the message again to restart it.",
        )

    def _next(
        self, should_stop: StopCheck, deadline: float | None = None, *, cancel_kills: bool = False
    ) -> dict[str, Any]:
        while True:
            try:
                ev = self.events.get(timeout=0.05)
            except queue.Empty:
                if cancel_kills and should_stop():
                    self.close()
                    from pipeline.errors import JobCancelled

                    raise JobCancelled("stopped loading the bundle") from None
                if deadline is not None and time.monotonic() > deadline:
                    self.close()
                    raise ChatError(
                        f"the LiteRT worker did not answer in {START_TIMEOUT_S:.0f} s"
                    ) from None
                continue
            if ev is None:
                raise self._died()
            return ev

    def _send(self, cmd: dict[str, Any]) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise self._died()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    # ---- the Backend interface

    def count_tokens(self, prompt: str) -> int:
        if prompt in self._counts:
            return self._counts[prompt]
        self._ensure()
        self._ids += 1
        gid = self._ids
        self._send({"cmd": "count", "id": gid, "text": prompt})
        while True:
            ev = self._next(never_stop)
            if ev.get("id") == gid and ev["event"] == "count":
                if len(self._counts) > 256:
                    self._counts.clear()
                self._counts[prompt] = int(ev["n"])
                return int(ev["n"])
            if ev.get("id") == gid and ev["event"] == "failed":
                raise ChatError(str(ev["message"]), hint=ev.get("hint"))

    def generate(
        self, prompt: str, sampling: Sampling, should_stop: Callable[[], bool]
    ) -> Iterator[GenDelta | GenDone]:
        self._ensure()
        self._ids += 1
        gid = self._ids
        s = {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "max_new_tokens": sampling.max_new_tokens,
        }
        self._send({"cmd": "generate", "id": gid, "text": prompt, "sampling": s})
        asked = False
        while True:
            try:
                ev = self.events.get(timeout=0.05)
            except queue.Empty:
                ev = {}
            if ev is None:
                raise self._died()
            if not asked and should_stop():
                asked = True
                self._send({"cmd": "stop", "id": gid})
            if ev.get("id") != gid:
                continue
            kind = ev["event"]
            if kind == "delta":
                yield GenDelta(str(ev["text"]), int(ev.get("tokens", 1)))
            elif kind == "done":
                yield GenDone(
                    prompt_tokens=int(ev["prompt_tokens"]),
                    new_tokens=int(ev["new_tokens"]),
                    first_token_s=ev.get("first_token_s"),
                    total_s=float(ev["total_s"]),
                    stop_reason=ev["stop_reason"],
                    prefill_tokens=ev.get("prefill_tokens"),
                )
                return
            elif kind == "failed":
                raise ChatError(str(ev["message"]), hint=ev.get("hint"))

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                proc.stdin.flush()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


def open_bundle(
    path: str | os.PathLike[str],
    *,
    runtime: Runtime | None = None,
    threads: int = 2,
    context_length: int | None = None,
    label: str | None = None,
    should_stop: StopCheck = never_stop,
) -> LiteRTBackend:
    """Check ``path`` and start its worker (see the module doc). ``runtime`` None picks
    LiteRT-LM for ``.task``/``.litertlm`` and the interpreter for ``.tflite``."""
    p = Path(path)
    chosen: Runtime = runtime or ("interpreter" if p.suffix == ".tflite" else "litert_lm")
    if chosen not in ("litert_lm", "interpreter"):
        raise ChatError(f"unknown runtime {chosen!r}", hint="Use litert_lm or interpreter.")
    _check_file(p, chosen)
    if threads < 1:
        raise ChatError(f"threads must be at least 1 (got {threads})")
    tokenizer = None
    if p.suffix == ".tflite":
        tokenizer = _tflite_tokenizer(p)
        if tokenizer is None:
            raise ChatError(
                f"{p.name} holds no tokenizer and there is none beside it",
                hint="Keep the export's .task (or a tokenizer.model) in the same folder.",
            )
    kv = _manifest_kv(p)
    if context_length and kv and context_length > kv and chosen == "litert_lm":
        raise ChatError(
            f"{p.name} was exported with a KV cache of {kv} tokens; a context of "
            f"{context_length} does not fit",
            hint=f"Use a context of at most {kv}, or export with a larger --kv-cache.",
        )
    backend = LiteRTBackend(
        p, chosen, threads=threads, context_length=context_length, tokenizer=tokenizer, label=label
    )
    backend.start(should_stop)
    return backend
