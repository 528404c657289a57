"""`gemma-tui export`, `export-env`, `exports` and `bundle`: the export stage, headless.

    gemma-tui export RUN [--checkpoint STEP] --quant dynamic_int8 --format task,litertlm
    gemma-tui export-env                 # create the export environment (once)
    gemma-tui exports                    # list exports with their verdicts
    gemma-tui bundle check FILE          # validate a .task / .litertlm (zip-slip, members)
    gemma-tui bundle ask FILE "prompt"   # a greedy reply from a bundle on the CPU

Exit codes: 0 exported and verified; 1 exported but verification failed (the bundle is kept
with the report); 2 usage or environment errors; 130 cancelled (nothing written).
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.events import Event

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class ExportPrinter:
    """Stage lines on stderr: a line when a stage starts, one when it ends (with its
    seconds), and on a terminal a live "convert … 42 s" while a long stage runs."""

    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self._status: Any = None
        self._stage: str | None = None

    def __enter__(self) -> ExportPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_status()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: Event) -> None:
        from rich.markup import escape

        from pipeline.events import LogLine, Progress, StageDone, StageStarted
        from pipeline.export.job import STAGE_LABEL

        if isinstance(event, StageStarted):
            self._stop_status()
            self._stage = event.stage
            label = STAGE_LABEL.get(event.stage, event.stage)
            detail = f" [dim]({escape(event.detail)})[/]" if event.detail else ""
            self.console.print(f"[cyan]▶[/] {escape(label)}{detail}", highlight=False)
            if self.console.is_terminal:
                self._status = self.console.status(f"{label} …")
                self._status.start()
        elif isinstance(event, Progress):
            if self._status is not None and event.unit == "s":
                label = STAGE_LABEL.get(event.stage, event.stage)
                self._status.update(f"{label} … {event.done} s")
        elif isinstance(event, StageDone):
            self._stop_status()
            self.console.print(
                f"[green]✓[/] {escape(event.summary)} [dim]{event.seconds:.1f} s[/]",
                highlight=False,
            )
        elif isinstance(event, LogLine) and (event.level != "info" or self.verbose):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.console.print(f"[{style}]{escape(event.message)}[/]", highlight=False)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _ints(text: str, what: str) -> tuple[int, ...]:
    from pipeline.errors import ExportError

    try:
        return tuple(int(p) for p in _split(text))
    except ValueError as exc:
        message = f"{what} must be whole numbers separated by commas, not {text!r}"
        raise ExportError(message) from exc


def _options(args: argparse.Namespace) -> Any:
    from pipeline.export.job import ExportOptions, check_options

    defaults = ExportOptions()
    options = ExportOptions(
        quant=args.quant,
        formats=_split(args.format) or defaults.formats,
        prefill_lens=_ints(args.prefill, "--prefill") if args.prefill else defaults.prefill_lens,
        kv_len=args.kv_cache,
        verify=not args.no_verify,
        prompts=tuple(args.prompt) if args.prompt else defaults.prompts,
        max_new_tokens=args.max_new_tokens,
        min_agreement=args.min_agreement,
        check_memory=not args.no_memory_check,
        keep_hf=args.keep_hf,
        force=args.force,
    )
    return check_options(options)


def cmd_export(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from gemma_tui.cli import _err_console, _out_console
    from gemma_tui.cli_train import StopOnInterrupt
    from pipeline.errors import JobCancelled
    from pipeline.export.job import export_run, human_bytes
    from pipeline.workspace import Workspace

    err = _err_console()
    options = _options(args)
    checkpoint = args.checkpoint
    start = time.monotonic()
    try:
        with ExportPrinter(err, verbose=args.verbose) as printer, StopOnInterrupt(err) as stop:
            result = export_run(
                args.run,
                checkpoint=checkpoint,
                options=options,
                workspace=Workspace.default(),
                out_dir=args.out,
                on_event=printer,
                should_stop=stop,
            )
    except JobCancelled as exc:
        err.print(f"[yellow]Cancelled:[/] {escape(exc.message)}; nothing was written.")
        return EXIT_CANCELLED
    out = _out_console()
    for name, size in result.files.items():
        out.print(f"{result.out_dir / name}  {human_bytes(size)}", highlight=False)
    if result.report is not None:
        style = "green" if result.report.passed else "bold red"
        err.print(f"[{style}]{escape(result.report.summary())}[/]", highlight=False)
        err.print(f"report: {result.out_dir / 'verify.md'}", highlight=False)
    err.print(f"[dim]export took {time.monotonic() - start:.0f} s[/]")
    return EXIT_OK if result.status == "ok" else EXIT_FAILED


def cmd_export_env(args: argparse.Namespace) -> int:
    from gemma_tui.cli import _err_console
    from pipeline.export.env import check_export_env, create_export_env, find_export_env

    err = _err_console()
    printer = ExportPrinter(err, verbose=True)
    env = find_export_env()
    if env is not None and not args.force:
        check_export_env(env)
        err.print(f"[green]✓[/] export environment ready: {env.python} ({env.origin})")
        return EXIT_OK
    python = create_export_env(on_event=printer)
    check_export_env()
    err.print(f"[green]✓[/] export environment ready: {python}")
    return EXIT_OK


def cmd_exports(args: argparse.Namespace) -> int:
    import json

    from gemma_tui.cli import _out_console
    from pipeline.export.job import human_bytes, list_exports

    out = _out_console()
    exports = list_exports()
    if args.json:
        print(json.dumps([{"path": str(p), "manifest": m} for p, m in exports], indent=2))
        return EXIT_OK
    if not exports:
        out.print("No exports yet. Make one with `gemma-tui export RUN`.")
        return EXIT_OK
    for path, manifest in exports:
        if manifest is None:
            out.print(f"{path.name}  [red]damaged (no readable manifest.json)[/]")
            continue
        files = ", ".join(
            f"{n} {human_bytes(f['bytes'])}" for n, f in manifest.get("files", {}).items()
        )
        verify = (manifest.get("verify") or {}).get("summary", "not verified")
        status = "[green]ok[/]" if manifest.get("status") == "ok" else "[red]failed[/]"
        out.print(f"{path.name}  {status}  {files}\n    {verify}", highlight=False)
    return EXIT_OK


def cmd_bundle_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma_tui.cli import _out_console
    from pipeline.errors import ExportError
    from pipeline.export.bundle import check_litertlm, check_task

    out = _out_console()
    path = Path(args.file)
    if path.suffix == ".task":
        info = check_task(path)
        for m in info.members:
            out.print(f"  {m.name:24} {m.size:>12,} B", highlight=False)
        out.print(
            f"{path}: a valid .task; start {info.start_token}, stop {', '.join(info.stop_tokens)}",
            highlight=False,
        )
    elif path.suffix == ".litertlm":
        size = check_litertlm(path)
        out.print(f"{path}: a .litertlm file of {size:,} bytes", highlight=False)
    else:
        raise ExportError(f"{path} is neither a .task nor a .litertlm file")
    return EXIT_OK


def cmd_bundle_ask(args: argparse.Namespace) -> int:
    from gemma_tui.cli import _err_console, _out_console
    from pipeline.export.job import bundle_replies

    replies = bundle_replies(
        args.file,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        on_event=ExportPrinter(_err_console(), verbose=False),
    )
    out = _out_console()
    for prompt, reply in zip(args.prompt, replies, strict=True):
        out.print(f"[bold]> {prompt}[/]\n{reply}", highlight=False, markup=True)
    return EXIT_OK


def add_commands(commands: Any) -> None:
    from pipeline.export.job import FORMATS, QUANTS
    from pipeline.export.verify import MIN_AGREEMENT

    p = commands.add_parser(
        "export",
        help="merge a run's LoRA adapter, convert to TFLite, bundle (.task, .litertlm) and "
        "verify the bundle against the merged model",
        description="Export one checkpoint of a training run for phones and CPUs: merge the "
        "adapter into the base model, convert it with litert-torch (prefill and decode "
        "signatures, KV cache, the chosen quantization), bundle it as a MediaPipe .task and "
        "a LiteRT-LM .litertlm, then prove each bundle answers like the merged model "
        "(greedy token agreement, first divergence, the stop test). Everything lands in "
        "<workspace>/exports/<run>-<checkpoint>-<quant>/ only when complete. Ctrl+C cancels "
        "and leaves nothing behind. Exit codes: 0 exported and verified, 1 verification "
        "below the threshold (bundle and report kept), 2 usage or environment error, "
        "130 cancelled.",
    )
    p.add_argument("run", metavar="RUN", help="a run's name (gemma-tui runs) or its folder")
    p.add_argument(
        "--checkpoint",
        metavar="STEP",
        help="a step number, step-000200 or 'final' (default: final, else the newest)",
    )
    p.add_argument(
        "--quant",
        default="dynamic_int8",
        metavar="Q",
        help=f"quantization: {', '.join(QUANTS)} (default dynamic_int8)",
    )
    p.add_argument(
        "--format",
        default="task,litertlm",
        metavar="F[,F]",
        help=f"bundles to write, comma-separated from {', '.join(FORMATS)} (default task,litertlm)",
    )
    p.add_argument(
        "--prefill",
        metavar="N[,N]",
        help="prefill signature lengths (default 128)",
    )
    p.add_argument(
        "--kv-cache",
        type=int,
        default=1280,
        metavar="N",
        help="KV-cache length: the most tokens a conversation can hold (default 1280)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        metavar="X",
        help="verification threshold, mean greedy token agreement 0-1 (default per quant: "
        + ", ".join(f"{k} {v:.2f}" for k, v in MIN_AGREEMENT.items())
        + ")",
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a verification prompt (repeatable; default: four fixed prompts)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        metavar="N",
        help="tokens generated per verification prompt (default 32)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the verification")
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="start even when free memory is below the converter's expected peak",
    )
    p.add_argument("--keep-hf", action="store_true", help="keep the merged Hugging Face checkpoint")
    p.add_argument("--out", metavar="DIR", help="write the export here instead")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    p.add_argument("-v", "--verbose", action="store_true", help="print every log line")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser(
        "export-env",
        help="create the export environment (litert-torch, MediaPipe, LiteRT-LM; ~4.5 GB)",
        description="Create the virtual environment the export runs in (.venv-export beside "
        "the project: torch CPU, litert-torch, TensorFlow, MediaPipe 0.10.35, LiteRT-LM). "
        "It stays out of the main environment so the TUI starts fast and never loads "
        "TensorFlow. Needs the package index once; about 4.5 GB and 3-6 minutes.",
    )
    p.add_argument("--force", action="store_true", help="re-create it even if it exists")
    p.set_defaults(func=cmd_export_env)

    p = commands.add_parser("exports", help="list exports with their verification verdicts")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    p.set_defaults(func=cmd_exports)

    p = commands.add_parser("bundle", help="check a bundle, or ask it something on the CPU")
    sub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    q = sub.add_parser(
        "check",
        help="validate a .task (members, zip-slip) or .litertlm file",
        description="Validate a bundle without unpacking it: a .task must be a zip whose "
        "members stay inside their folder (no '..', no absolute paths, no links) and hold "
        "the TFLite model and the tokenizer. Exit 2 with the reason otherwise.",
    )
    q.add_argument("file", metavar="FILE")
    q.set_defaults(func=cmd_bundle_check)
    q = sub.add_parser("ask", help="greedy replies of a .task or .litertlm to prompts (CPU)")
    q.add_argument("file", metavar="FILE")
    q.add_argument("prompt", nargs="+", metavar="PROMPT")
    q.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    q.set_defaults(func=cmd_bundle_ask)
