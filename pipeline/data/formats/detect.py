"""Which dataset format records look like, from their keys.

:func:`guess_format` takes the format most of the first records vote for (ties go to ShareGPT,
then ChatML, then Alpaca); :func:`format_error` says why none matched. Column names come from
the :class:`~pipeline.data.types.DatasetSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.data.types import FORMATS, DatasetSpec, FormatName

DETECT_RECORDS = 50
"""How many parseable records format detection looks at."""
DETECT_ITEMS = 1000
"""How many items at most it reads to find them (a file of broken lines stays cheap)."""

FORMAT_HINT = (
    "set the format and the column names (DatasetSpec.format / columns, --format) when the "
    "file uses other names"
)


def _format_votes(data: dict[str, Any], spec: DatasetSpec) -> list[FormatName]:
    votes: list[FormatName] = []
    share, chat = spec.column_map("sharegpt"), spec.column_map("chatml")
    for fmt, cols in (("sharegpt", share), ("chatml", chat)):
        if cols["messages"] in data:
            votes.append(fmt)  # type: ignore[arg-type]  # literal from the tuple above
    if len(votes) == 2:  # same column name: tell them apart by the first turn's keys
        turns = data[share["messages"]]
        first = turns[0] if isinstance(turns, list) and turns else None
        if isinstance(first, dict):
            if chat["role"] in first and share["role"] not in first:
                votes = ["chatml"]
            elif share["role"] in first and chat["role"] not in first:
                votes = ["sharegpt"]
    alpaca = spec.column_map("alpaca")
    if alpaca["prompt"] in data or alpaca["response"] in data:
        votes.append("alpaca")
    return votes


def guess_format(records: Sequence[dict[str, Any]], spec: DatasetSpec) -> FormatName | None:
    """The format most of ``records`` look like, or None when none matches."""
    counts: dict[FormatName, int] = dict.fromkeys(FORMATS, 0)
    for data in records:
        for fmt in _format_votes(data, spec)[:1]:
            counts[fmt] += 1
    best = max(FORMATS, key=lambda f: counts[f])  # ties: sharegpt, chatml, alpaca
    return best if counts[best] else None


def format_error(records: Sequence[dict[str, Any]], spec: DatasetSpec) -> str:
    """Why no format matched: the keys found and the keys each format expects."""
    keys = sorted({k for data in records for k in data})
    share, chat, alpaca = (spec.column_map(f) for f in ("sharegpt", "chatml", "alpaca"))
    return (
        f"cannot tell the dataset format: the records have the keys {keys}, but "
        f"ShareGPT expects {share['messages']!r} (a list of {share['role']!r}/"
        f"{share['content']!r} turns), ChatML {chat['messages']!r} (a list of "
        f"{chat['role']!r}/{chat['content']!r} messages) and Alpaca {alpaca['prompt']!r} and "
        f"{alpaca['response']!r}"
    )
