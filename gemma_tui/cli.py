"""The `gemma-tui` command: the TUI with no arguments, the same jobs headless with them.

This module is a table of commands -> pipeline functions: it parses arguments, prints
progress and results, and maps errors to exit codes. It holds no logic of its own.

Exit codes: 0 success; 1 invalid data found (rows rejected, profile problems) or a training
run failed; 2 usage or environment errors (bad arguments, missing files, unreadable input);
130 interrupted (a training run stopped by Ctrl+C). `train` and `runs` live in
:mod:`gemma_tui.cli_train`, `export` and its kin in :mod:`gemma_tui.cli_export`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_tui import cli_chat, cli_export, cli_train

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.data.types import DatasetSpec
    from pipeline.events import Event

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

FORMAT_CHOICES = ("auto", "sharegpt", "alpaca", "chatml")


class _Printer:
    """Shows pipeline events as a rich progress bar on stderr (only on a terminal)."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Printer:
        if not self.quiet and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:>10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def __call__(self, event: Event) -> None:
        from pipeline.events import LogLine, Progress, StageDone

        if isinstance(event, Progress):
            if self._progress is None:
                return
            task = self._tasks.get(event.stage)
            if task is None:
                task = self._progress.add_task(event.stage, total=event.total)
                self._tasks[event.stage] = task
            self._progress.update(task, completed=event.done, total=event.total)
        elif isinstance(event, LogLine) and not self.quiet:
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.console.print(f"[{style}]{event.message}[/]", highlight=False)
        elif isinstance(event, StageDone) and not self.quiet:
            self.console.print(
                f"[green]✓[/] {event.stage}: {event.summary} ({event.seconds:.1f} s)",
                highlight=False,
            )


def _err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _out_console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True)


def _key_values(pairs: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise _UsageError(f"--{what} expects KEY=VALUE, got {pair!r}.")
        out[key] = value
    return out


class _UsageError(Exception):
    pass


def _spec(args: argparse.Namespace) -> DatasetSpec:
    from pipeline.data.types import ROLES, DatasetSpec

    roles = _key_values(args.role, "role")
    for name, role in roles.items():
        if role not in ROLES:
            raise _UsageError(
                f"--role {name}={role}: unknown canonical role {role!r}; "
                f"use one of {', '.join(ROLES)}."
            )
    fmt = None if args.format == "auto" else args.format
    return DatasetSpec(
        format=fmt,
        columns=_key_values(args.column, "column"),
        roles=roles,  # type: ignore[arg-type]  # checked against ROLES above
        max_chars=args.max_chars,
    )


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="auto",
        help="dataset format (default: detect per file)",
    )
    p.add_argument(
        "--column",
        action="append",
        metavar="KEY=NAME",
        help="rename a column, e.g. messages=dialog or response=answer (repeatable)",
    )
    p.add_argument(
        "--role",
        action="append",
        metavar="NAME=ROLE",
        help="map a role name onto a canonical role (system, user, model, tool_call, "
        "tool_result), e.g. bot=model (repeatable)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=65536,
        metavar="N",
        help="longest allowed text of one turn, in characters (default: 65536)",
    )


def _print_issues(console: Console, issues: Sequence[Any], shown: int, total: int) -> None:
    from rich.markup import escape

    for issue in issues[:shown]:
        colour = "yellow" if issue.severity == "warning" else "red"
        console.print(
            f"[{colour}]{escape(issue.location())}[/]: {escape(issue.reason)} "
            f"[dim]({issue.code})[/]",
            highlight=False,
            soft_wrap=True,
        )
    if total > shown:
        console.print(f"[dim]… and {total - shown} more issues[/]", highlight=False)


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _default_outputs(args: argparse.Namespace, job: str) -> tuple[Path, Path]:
    """The workspace's default output names for ``job`` (the same the TUI offers)."""
    from pipeline.workspace import Workspace

    source = args.files[0] if len(args.files) == 1 else "dataset"
    main_out, second = Workspace.default().dataset_outputs(source, job)  # type: ignore[arg-type]
    if getattr(args, "to", None) == "hf":
        main_out = main_out.with_suffix("")  # a folder, not a .jsonl
    return main_out, second


# --- data commands --------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.data.validate import validate_dataset

    err = _err_console()
    with _Printer(err, quiet=args.json) as printer:
        report = validate_dataset(
            args.files, _spec(args), max_issues=args.max_issues, on_event=printer
        )
    errors = sum(1 for i in report.issues if i.severity == "error")
    if args.json:
        print(
            json.dumps(
                {
                    "sources": list(report.sources),
                    "formats": report.formats,
                    "total": report.total,
                    "valid": report.valid,
                    "invalid": report.invalid,
                    "issue_count": report.issue_count,
                    "counts_by_code": report.counts_by_code,
                    "issues": [i.to_dict() for i in report.issues],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        from rich.markup import escape

        out = _out_console()
        _print_issues(out, report.issues, args.show, report.issue_count)
        # escape: a split of a saved DatasetDict is named "data_dir[train]", not markup
        formats = escape(", ".join(f"{Path(p).name}: {f}" for p, f in report.formats.items()))
        out.print(
            f"{report.total} rows: [green]{report.valid} valid[/], "
            f"[{'red' if report.invalid else 'green'}]{report.invalid} invalid[/]"
            f" [dim]({formats})[/]",
            highlight=False,
        )
        if report.counts_by_code:
            out.print(f"issues: {_counts_line(report.counts_by_code)}", highlight=False)
    return EXIT_INVALID if report.invalid or errors else EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from pipeline.data.validate import convert_dataset

    err = _err_console()
    with _Printer(err) as printer:
        result = convert_dataset(
            args.files,
            Path(args.output) if args.output else _default_outputs(args, "convert")[0],
            spec=_spec(args),
            to=args.to,
            rejects=Path(args.rejects) if args.rejects else None,
            on_event=printer,
        )
    out = _out_console()
    out.print(
        f"wrote {result.valid} rows to {result.output}\n"
        f"rejected {result.rejected} rows -> {result.rejects}",
        highlight=False,
    )
    if result.counts_by_code:
        out.print(f"reasons: {_counts_line(result.counts_by_code)}", highlight=False)
    return EXIT_INVALID if result.rejected else EXIT_OK


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.data.dedup import dedup_dataset

    err = _err_console()
    with _Printer(err) as printer:
        result = dedup_dataset(
            args.files,
            Path(args.output) if args.output else _default_outputs(args, "dedup")[0],
            spec=_spec(args),
            near_threshold=None if args.no_near else args.near_threshold,
            removed=Path(args.removed) if args.removed else None,
            on_event=printer,
        )
    out = _out_console()
    out.print(_describe_result(result), highlight=False)
    return EXIT_OK


def cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data.split import split_dataset

    if args.to == "hf" and args.eval:
        raise _UsageError(
            "--to hf writes one DatasetDict folder (--train) with train and eval splits; "
            "leave --eval out."
        )
    if args.to != "hf" and bool(args.train) != bool(args.eval):
        raise _UsageError(
            "--eval is required with --train (and --train with --eval); "
            "leave both out to write to the workspace."
        )
    default_train, default_eval = _default_outputs(args, "split")
    train = Path(args.train) if args.train else default_train
    held_out = None if args.to == "hf" else Path(args.eval) if args.eval else default_eval
    err = _err_console()
    with _Printer(err) as printer:
        result = split_dataset(
            args.files,
            train,
            held_out,
            spec=_spec(args),
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            to=args.to,
            on_event=printer,
        )
    _out_console().print(_describe_result(result), highlight=False)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from pipeline.data.stats import compute_stats
    from pipeline.models.tokenizer import load_tokenizer

    err = _err_console()
    with _Printer(err, quiet=args.json) as printer:
        tokenizer = load_tokenizer(on_event=printer)
        stats = compute_stats(
            args.files,
            spec=_spec(args),
            tokenizer=tokenizer,
            max_seq_len=args.max_seq_len,
            train_on_prompt=args.train_on_prompt,
            on_event=printer,
        )
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_stats(_out_console(), stats, args.max_seq_len)
    return EXIT_OK


def _describe_result(result: Any) -> str:
    """One line per field of a result dataclass (paths and counts)."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name == "seconds":
            continue
        if isinstance(value, dict):
            value = _counts_line(value) or "none"
        elif isinstance(value, float):
            value = f"{value:g}"
        elif isinstance(value, int):
            value = f"{value:,}"
        lines.append(f"{f.name.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def _print_stats(console: Console, stats: Any, max_seq_len: int) -> None:
    import plotext as plt
    from rich.table import Table
    from rich.text import Text

    lengths = [int(n) for n in stats.lengths]
    if lengths:
        plt.clear_figure()
        plt.hist(lengths, bins=min(40, max(5, len(set(lengths)))))
        if max(lengths) > max_seq_len:
            plt.vertical_line(max_seq_len, color="red")
        plt.title(f"tokens per example (red: max_seq_len {max_seq_len})")
        plt.plotsize(min(console.width, 100), 18)
        plt.theme("clear")
        console.print(Text.from_ansi(plt.build()))
    s = stats.summary
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("examples", f"{stats.examples:,}"),
        ("invalid rows skipped", f"{stats.invalid:,}"),
        ("tokens", f"{stats.total_tokens:,}"),
        ("length min / median / mean", f"{s.min:,} / {s.median:,.0f} / {s.mean:,.1f}"),
        ("length p90 / p99 / max", f"{s.p90:,.0f} / {s.p99:,.0f} / {s.max:,}"),
        (
            f"over max_seq_len {max_seq_len}",
            f"{stats.truncated:,} ({stats.truncated_tokens:,} tokens cut)",
        ),
        ("trained tokens", f"{stats.trained_tokens:,} ({stats.trained_share:.1%})"),
        ("trained share after truncation", f"{stats.trained_share_after_truncation:.1%}"),
        ("examples left with nothing to train", f"{stats.lost_all_trained:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


# --- profiles ------------------------------------------------------------------------------


def cmd_profile_list(args: argparse.Namespace) -> int:
    from pipeline.profiles import list_profiles, load_profile

    out = _out_console()
    for name in list_profiles():
        profile = load_profile(name)
        out.print(f"[bold]{name}[/]  {profile.description}", highlight=False)
    return EXIT_OK


def cmd_profile_validate(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from pipeline.errors import ProfileError
    from pipeline.profiles import load_profile

    status = EXIT_OK
    for path in args.profiles:
        try:
            load_profile(path)
        except ProfileError as exc:
            _err_console().print(f"[red]{escape(exc.message)}[/]", highlight=False)
            status = EXIT_INVALID
        else:
            _out_console().print(f"[green]✓[/] {path}", highlight=False)
    return status


def cmd_profile_show(args: argparse.Namespace) -> int:
    from pipeline.profiles import dumps_profile, load_profile

    print(dumps_profile(load_profile(args.profile)), end="")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-tui",
        description="Fine-tune Gemma 3 with LoRA and ship it to the edge, from the terminal. "
        "With no command, opens the TUI.",
    )
    parser.add_argument(
        "--open",
        metavar="PATH",
        help="open this dataset in the TUI (default: the bundled sample, with a few broken rows)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser(
        "data", help="validate, convert, deduplicate, measure and split datasets"
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def add_data(name: str, help_text: str, func: Callable[[argparse.Namespace], int]):
        p = data_commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "files",
            nargs="+",
            metavar="FILE",
            help="a .json/.jsonl/.csv/.parquet file, a folder, a glob, or a folder saved by "
            "Hugging Face datasets' save_to_disk (a Dataset, or a DatasetDict: every split)",
        )
        _add_spec_arguments(p)
        p.set_defaults(func=func)
        return p

    p = add_data(
        "validate", "check every row and report each problem with its location", cmd_validate
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--show", type=int, default=50, metavar="N", help="issues to print (default 50)")
    p.add_argument(
        "--max-issues", type=int, default=10_000, metavar="N", help="issues to keep in the report"
    )

    p = add_data(
        "convert",
        "write the valid rows as ShareGPT (or ChatML) JSONL, or as a saved Hugging Face "
        "dataset, and the rejected rows with reasons",
        cmd_convert,
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output .jsonl; with --to hf a folder (a saved Hugging Face Dataset) "
        "(default: <workspace>/datasets/<name>.converted.jsonl)",
    )
    p.add_argument(
        "--to",
        choices=("sharegpt", "chatml", "hf"),
        default="sharegpt",
        help="sharegpt or chatml JSONL, or hf: ShareGPT rows saved with datasets' "
        "save_to_disk, read back with datasets.load_from_disk (default: sharegpt)",
    )
    p.add_argument(
        "--rejects",
        metavar="PATH",
        help="rejects file, always JSONL (default: <OUT stem>.rejects.jsonl)",
    )

    p = add_data("dedup", "remove exact and near-duplicate conversations", cmd_dedup)
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output .jsonl (default: <workspace>/datasets/<name>.dedup.jsonl)",
    )
    p.add_argument(
        "--near-threshold",
        type=float,
        default=0.9,
        metavar="J",
        help="MinHash Jaccard threshold for near duplicates (default 0.9)",
    )
    p.add_argument("--no-near", action="store_true", help="exact duplicates only")
    p.add_argument("--removed", metavar="PATH", help="where to list removed rows")

    p = add_data("stats", "token lengths, truncation and trained-token share", cmd_stats)
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=1024,
        metavar="N",
        help="the trainer's train.sequence_length: an example keeps its first N + 1 tokens "
        "(a row predicts tokens 1..N from 0..N-1); longer ones count as truncated "
        "(default 1024)",
    )
    p.add_argument("--train-on-prompt", action="store_true", help="count prompt tokens as trained")
    p.add_argument("--json", action="store_true", help="print the stats as JSON on stdout")

    p = add_data("split", "seeded train/eval split", cmd_split)
    p.add_argument(
        "--train",
        metavar="OUT",
        help="train .jsonl; with --to hf the DatasetDict folder that holds both splits "
        "(default: <workspace>/datasets/<name>.train.jsonl)",
    )
    p.add_argument(
        "--eval",
        metavar="OUT",
        help="eval .jsonl, not with --to hf (default: <workspace>/datasets/<name>.eval.jsonl)",
    )
    p.add_argument(
        "--to",
        choices=("sharegpt", "chatml", "hf"),
        default="sharegpt",
        help="sharegpt or chatml JSONL, or hf: one saved Hugging Face DatasetDict with "
        "'train' and 'eval' splits (default: sharegpt)",
    )
    p.add_argument("--eval-fraction", type=float, default=0.1, metavar="F")
    p.add_argument("--seed", type=int, default=0)

    profile = commands.add_parser("profile", help="list, show and validate training profiles")
    profile_commands = profile.add_subparsers(
        dest="profile_command", metavar="ACTION", required=True
    )
    p = profile_commands.add_parser("list", help="the shipped profiles")
    p.set_defaults(func=cmd_profile_list)
    p = profile_commands.add_parser("show", help="print a profile with every default filled in")
    p.add_argument("profile", metavar="NAME_OR_PATH")
    p.set_defaults(func=cmd_profile_show)
    p = profile_commands.add_parser("validate", help="check profile files; report every problem")
    p.add_argument("profiles", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_profile_validate)

    cli_train.add_commands(commands)
    cli_export.add_commands(commands)
    cli_chat.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from gemma_tui.app import run_app
        from pipeline.data import DEFAULT_SAMPLE, display_path

        run_app(args.open or display_path(DEFAULT_SAMPLE))
        return EXIT_OK

    from rich.markup import escape

    from pipeline.errors import PipelineError

    started = time.monotonic()
    try:
        status = args.func(args)
    except (_UsageError, cli_train.TrainUsageError) as exc:
        parser.exit(EXIT_USAGE, f"gemma-tui: error: {exc}\n")
    except PipelineError as exc:
        console = _err_console()
        console.print(f"[bold red]{exc.title}:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        _err_console().print("[yellow]Interrupted.[/]")
        return 130
    if sys.stderr.isatty():
        _err_console().print(f"[dim]done in {time.monotonic() - started:.1f} s[/]")
    return status


if __name__ == "__main__":
    sys.exit(main())
