"""The keys of the Dataset screen: its bindings (and which need an open dataset), the
browsing keys the help lists, and the text shown before a dataset is open."""

from __future__ import annotations

from textual.binding import Binding, BindingType

DATASET_BINDINGS: list[BindingType] = [
    Binding("o", "open", "Open", tooltip="Open a dataset file or folder"),
    Binding(
        "f",
        "reopen",
        "Format",
        tooltip="Read the file again with another format, column or role names",
    ),
    Binding("v", "validate", "Validate", tooltip="Check every row; count the problems by kind"),
    Binding("c", "convert", "Convert", tooltip="Write the valid rows, and a rejects file"),
    Binding("d", "dedup", "Dedup", tooltip="Remove exact and near duplicates"),
    Binding("p", "split", "Split", tooltip="Write a train file and an eval file"),
    Binding("s", "stats", "Stats", tooltip="Show or hide the token statistics"),
    # Not in the footer (no room): the stats pane's title names it.
    Binding(
        "m",
        "max_seq_len",
        "Max length",
        tooltip="Change the sequence length the statistics measure against",
        show=False,
    ),
    Binding(
        "n,right_square_bracket",
        "next_error",
        "Next error",
        key_display="n",
        tooltip="Jump to the next invalid row",
    ),
    Binding(
        "N,left_square_bracket",
        "previous_error",
        "Prev error",
        key_display="N",
        tooltip="Jump to the previous invalid row",
    ),
    # Not in the footer: the job bar shows "esc cancel" while a job runs.
    Binding("escape", "cancel_job", "Cancel job", tooltip="Stop the running job", show=False),
]

NEEDS_DATASET = frozenset(
    {
        "reopen",
        "max_seq_len",
        "validate",
        "convert",
        "dedup",
        "split",
        "stats",
        "next_error",
        "previous_error",
    }
)
"""Actions shown dimmed, and doing nothing, until a dataset is open."""

RECORD_KEYS: list[tuple[str, str]] = [
    ("↑ / ↓", "Previous / next record (loads more rows at the edges)"),
    ("pgup / pgdn", "Page up / down"),
    ("g / G", "First / last record"),
    ("tab", "Move between the records, the issues and the detail"),
    ("enter", "On an issue: jump to its row"),
]
"""Keys of the record table and the issue list (their own bindings), for the help screen."""

WELCOME = """\
[b]No dataset open.[/b]

Press [b]o[/b] to open a .jsonl, .json, .csv or .parquet file (or a folder of them),
or [b]ctrl+p[/b] for every command, [b]?[/b] for the keys.

Try: pipeline/data/samples/sample_sharegpt.jsonl
"""
