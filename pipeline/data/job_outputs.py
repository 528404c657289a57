"""What the jobs that write rows to files share (convert, dedup, split).

:func:`output_clash` finds an output that would overwrite an input or another output (each
job says so in its own words; :func:`refuse_inputs` is dedup's and split's),
:func:`row_serializer` picks the function that turns a conversation into an output row, and
:func:`ref_dict` is how a record's origin is written in a rejects or removed file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pipeline.data.types import Conversation, RecordRef
from pipeline.errors import DatasetError

OutputFormat = Literal["sharegpt", "chatml"]


def output_clash(
    inputs: Sequence[Path], outputs: Sequence[Path]
) -> tuple[Path, Literal["input", "same"]] | None:
    """The first output, in order, that is one of the input files (``"input"``: the same path,
    or the same file through a link) or the same file as an earlier output (``"same"``)."""
    resolved = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outputs:
        if out.resolve() in resolved or (
            out.exists() and any(os.path.samefile(out, p) for p in inputs)
        ):
            return out, "input"
        if out.resolve() in seen:
            return out, "same"
        seen.add(out.resolve())
    return None


def refuse_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """DatasetError when an output is one of the input files, or two outputs are the same."""
    clash = output_clash(inputs, outputs)
    if clash is None:
        return
    out, kind = clash
    if kind == "input":
        raise DatasetError(
            f"Refusing to write {out}: it is one of the input files.",
            hint="Choose an output path that is not an input (e.g. in workspace/datasets/).",
        )
    raise DatasetError(
        f"Two outputs of this job are the same file: {out}",
        hint="Give each output its own path.",
    )


def row_serializer(to: OutputFormat) -> Callable[[Conversation], dict[str, Any]]:
    """The converter's function that turns a Conversation into a row of format ``to``."""
    from pipeline.data import converter

    if to == "sharegpt":
        return converter.conversation_to_sharegpt
    if to == "chatml":
        return converter.conversation_to_chatml
    raise DatasetError(f"Unknown output format {to!r}", hint="Use 'sharegpt' or 'chatml'.")


def ref_dict(ref: RecordRef | None) -> dict[str, Any] | None:
    """``{"path", "line", "index"}`` of ``ref`` (None for None)."""
    if ref is None:
        return None
    return {"path": ref.path, "line": ref.line, "index": ref.index}


__all__ = ["OutputFormat", "output_clash", "ref_dict", "refuse_inputs", "row_serializer"]
