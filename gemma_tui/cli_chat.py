"""`gemma-tui chat MODEL`: the chat in a plain terminal (a REPL), or one-shot with --prompt.

    gemma-tui chat                          # the embedded Gemma 3 270M (Keras/JAX)
    gemma-tui chat my-run                   # the newest checkpoint of a run; my-run@200, @final
    gemma-tui chat my-run-final-q8          # an export (its .litertlm) on the CPU
    gemma-tui chat path/to/model.task --runtime interpreter
    gemma-tui chat my-run --compare embedded   # each message to both, one after the other
    gemma-tui chat tiny --prompt "Hi" --prompt "And then?"   # no REPL; replies on stdout

In the REPL, replies stream to stdout and the numbers (tokens, first-token latency, tok/s)
go to stderr. Ctrl+C stops a reply (it is kept, marked stopped); Ctrl+D or /quit leaves.
Commands: /help, /reset, /undo, /system TEXT, /set KEY=VALUE..., /save [FILE], /quit.
With stdin not a terminal and no --prompt, every line of stdin is one message.

Exit codes: 0 done; 2 the model cannot be opened or a setting is bad (the error says which);
1 a --prompt message failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.inference.chat import ChatSession

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HELP = """Commands:
  /reset            start a new conversation (the system prompt stays)
  /undo             forget the last exchange
  /system TEXT      set the system prompt (empty: none); starts a new conversation
  /set KEY=VALUE    temperature, top_k, top_p, seed, max_new_tokens (e.g. /set temperature=0.7)
  /save [FILE]      append the conversation to FILE as ShareGPT JSONL (training data)
  /quit             leave (or Ctrl+D); Ctrl+C stops a reply"""
SETTABLE = {"temperature": float, "top_k": int, "top_p": float, "seed": int, "max_new_tokens": int}


def _sampling(args: argparse.Namespace) -> Any:
    from pipeline.inference.chat import Sampling, check_sampling

    return check_sampling(
        Sampling(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
        )
    )


def _open(ref: str | None, args: argparse.Namespace, err: Console) -> Any:
    from gemma_tui.cli import _Printer
    from gemma_tui.cli_train import StopOnInterrupt
    from pipeline.inference.targets import OpenOptions, open_target, resolve_target
    from pipeline.workspace import Workspace

    ws = Workspace.default()
    target = resolve_target(ref, ws)
    options = OpenOptions(
        device=args.device,
        dtype=args.dtype,
        context_length=args.context,
        merge=args.merge,
        runtime=args.runtime,
        threads=args.threads,
    )
    err.print(f"[cyan]▶[/] opening {target.label} [dim]({target.detail})[/]", highlight=False)
    with _Printer(err, quiet=not args.verbose) as printer, StopOnInterrupt(err) as stop:
        backend = open_target(target, options, workspace=ws, on_event=printer, should_stop=stop)
    err.print(
        f"[green]✓[/] {backend.label} [dim]· context {backend.context_length} tokens[/]",
        highlight=False,
    )
    return backend


class _Reply:
    """Prints one streamed reply; Ctrl+C during it stops generation (the reply is kept)."""

    def __init__(self, out: Any, err: Console) -> None:
        self.out, self.err = out, err
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    def run(self, session: ChatSession, text: str, header: str | None) -> bool:
        import signal
        import threading

        from rich.markup import escape

        from pipeline.errors import ChatError
        from pipeline.inference.chat import ContextTrimmed, ReplyDone, TextDelta

        previous = None
        if threading.current_thread() is threading.main_thread():

            def on_sigint(signum: int, frame: Any) -> None:
                self.stop = True

            previous = signal.signal(signal.SIGINT, on_sigint)
        self.stop = False
        if header:
            self.err.print(f"[bold magenta]{escape(header)}[/]", highlight=False)
        try:
            for ev in session.stream(text, should_stop=self):
                if isinstance(ev, TextDelta):
                    self.out.write(ev.text)
                    self.out.flush()
                elif isinstance(ev, ContextTrimmed):
                    self.err.print(f"[yellow]{escape(ev.describe())}[/]", highlight=False)
                elif isinstance(ev, ReplyDone):
                    self.out.write("\n")
                    self.out.flush()
                    style = "yellow" if ev.stats.stop_reason == "stopped" else "dim"
                    self.err.print(f"[{style}]{escape(ev.stats.describe())}[/]", highlight=False)
            return True
        except ChatError as exc:
            self.err.print(f"[bold red]{exc.title}:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                self.err.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)
            return False
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def _default_save(session: ChatSession) -> Path:
    from pipeline.workspace import Workspace

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in session.backend.label)
    return Workspace.default().root / "chats" / f"{name[:40].strip('-')}-{stamp}.jsonl"


def _command(line: str, sessions: list[ChatSession], err: Console) -> bool:
    """Run a /command; False when it asks to quit."""
    from rich.markup import escape

    from pipeline.errors import ChatError
    from pipeline.inference.chat import check_sampling

    name, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    try:
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            err.print(HELP, highlight=False, markup=False)
        elif name == "reset":
            for s in sessions:
                s.reset()
            err.print("[dim]new conversation[/]")
        elif name == "undo":
            gone = [s.undo() for s in sessions]
            err.print(
                "[dim]forgot the last exchange[/]" if any(gone) else "[dim]nothing to undo[/]"
            )
        elif name == "system":
            for s in sessions:
                s.system = rest or None
                s.reset()
            err.print(f"[dim]system prompt {'set' if rest else 'cleared'}; new conversation[/]")
        elif name == "set":
            changes: dict[str, Any] = {}
            for pair in rest.split():
                key, _, value = pair.partition("=")
                if key not in SETTABLE or not value:
                    raise ChatError(
                        f"cannot set {pair!r}",
                        hint=f"Use KEY=VALUE with KEY one of {', '.join(SETTABLE)}.",
                    )
                try:
                    changes[key] = SETTABLE[key](value)
                except ValueError:
                    raise ChatError(f"{key} must be a number, not {value!r}") from None
            for s in sessions:
                s.sampling = check_sampling(replace(s.sampling, **changes))
            err.print(f"[dim]{escape(sessions[0].sampling.describe())}[/]", highlight=False)
        elif name == "save":
            for i, s in enumerate(sessions):
                path = Path(rest).expanduser() if rest else _default_save(s)
                if rest and len(sessions) > 1:
                    path = path.with_name(f"{path.stem}-{'ab'[i]}{path.suffix or '.jsonl'}")
                written = s.save_jsonl(path)
                err.print(f"[green]saved[/] {escape(str(written))}", highlight=False)
        else:
            err.print(f"[red]unknown command /{escape(name)}[/] (/help lists them)")
    except ChatError as exc:
        err.print(f"[bold red]{exc.title}:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            err.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)
    return True


def _send(sessions: list[ChatSession], text: str, err: Console) -> bool:
    printer = _Reply(sys.stdout, err)
    ok = True
    for i, s in enumerate(sessions):
        header = f"[{'AB'[i]}] {s.backend.label}" if len(sessions) > 1 else None
        ok = printer.run(s, text, header) and ok
    return ok


def cmd_chat(args: argparse.Namespace) -> int:
    from gemma_tui.cli import _err_console
    from pipeline.inference.chat import ChatSession

    err = _err_console()
    sampling = _sampling(args)
    backends = [_open(args.model, args, err)]
    try:
        if args.compare is not None:
            backends.append(_open(args.compare, args, err))
        sessions = [ChatSession(b, system=args.system, sampling=sampling) for b in backends]
        if args.prompt:
            ok = all([_send(sessions, p, err) for p in args.prompt])
            status = EXIT_OK if ok else EXIT_FAILED
        elif not sys.stdin.isatty():
            ok = True
            for line in sys.stdin:
                if line.strip():
                    ok = _send(sessions, line.rstrip("\n"), err) and ok
            status = EXIT_OK if ok else EXIT_FAILED
        else:
            status = _repl(sessions, err)
        if args.save:
            for i, s in enumerate(sessions):
                if s.history:
                    path = Path(args.save)
                    if len(sessions) > 1:
                        path = path.with_name(f"{path.stem}-{'ab'[i]}{path.suffix or '.jsonl'}")
                    err.print(f"[green]saved[/] {s.save_jsonl(path)}", highlight=False)
        return status
    finally:
        for b in backends:
            b.close()


def _repl(sessions: list[ChatSession], err: Console) -> int:
    err.print("[dim]Type a message. /help lists commands; Ctrl+C stops a reply; Ctrl+D leaves.[/]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            err.print()
            return EXIT_OK
        except KeyboardInterrupt:
            err.print()
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not _command(text, sessions, err):
                return EXIT_OK
            continue
        _send(sessions, line, err)


def add_commands(commands: Any) -> None:
    from pipeline.inference.chat import Sampling

    d = Sampling()
    p = commands.add_parser(
        "chat",
        help="talk to the base model, a run's checkpoint or an exported bundle",
        description=(__doc__ or "").split("\n\n")[0]
        + " MODEL: embedded (default), a run (NAME, NAME@STEP, NAME@final), an export, a "
        ".task/.litertlm/.tflite file, or a model source (tiny, a GGUF, a HF folder).",
    )
    p.add_argument("model", nargs="?", default=None, help="what to talk to (default: embedded)")
    p.add_argument("--compare", metavar="MODEL", help="send every message to this one too")
    p.add_argument("--system", help="system prompt (put before the first user message)")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="send TEXT, no REPL")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"default {d.top_k}; 0 = off")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p}")
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--context", type=int, default=None, help="tokens of prompt + reply")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU)")
    p.add_argument("--merge", action="store_true", help="merge a checkpoint's LoRA (faster)")
    p.add_argument("--runtime", choices=("litert_lm", "interpreter"), default=None)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for bundles")
    p.add_argument("--save", metavar="FILE", help="append the conversation as ShareGPT JSONL")
    p.add_argument("-v", "--verbose", action="store_true", help="show model loading steps")
    p.set_defaults(func=cmd_chat)
