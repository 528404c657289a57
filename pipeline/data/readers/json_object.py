"""One JSON object (a JSONL line or a JSON-array element) -> a record, or why it is not one.

:func:`parse_object` parses the bytes of one record with orjson; :func:`bad_json` turns a
parse error into a precise issue: invalid UTF-8 (with the byte and its offset), a record cut
off at the end of the file, an empty record, or malformed JSON with the line, column and the
text around the error.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.data.readers.records import BadRecord, RawRecord, record_issue
from pipeline.data.types import Issue, RecordRef


def json_kind(value: Any) -> str:
    """How a non-object JSON value is named in issues (``array``, ``string``, ...)."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def preview(raw: bytes | str, limit: int = 40) -> str:
    """The start of ``raw`` on one line, at most ``limit`` characters (for issue texts)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_object(
    data: bytes,
    ref: RecordRef,
    span: tuple[int, int] | None,
    *,
    at_eof: bool = False,
    what: str = "line",
) -> RawRecord | BadRecord:
    """Parse one JSON object (a JSONL line or a JSON-array element) into a record."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        return bad_json(data, err, ref, span, at_eof=at_eof, what=what)
    if type(value) is dict:
        return RawRecord(ref, value, span)
    issue = record_issue(
        ref,
        "not_an_object",
        f"the {what} holds a JSON {json_kind(value)} ({preview(data)}), not an object; each "
        'record must be a JSON object such as {"conversations": [...]} or '
        '{"instruction": ..., "output": ...}',
    )
    return BadRecord(ref, (issue,), data.decode("utf-8", "replace").rstrip("\r\n"), None, span)


def bad_json(
    data: bytes,
    err: orjson.JSONDecodeError,
    ref: RecordRef,
    span: tuple[int, int] | None,
    *,
    at_eof: bool,
    what: str,
) -> BadRecord:
    """The broken record for ``data``, which orjson refused with ``err``."""
    raw = data.decode("utf-8", "replace").rstrip("\r\n")
    first = ref.line or 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line_start = data.rfind(b"\n", 0, bad.start) + 1
        line = first + data.count(b"\n", 0, bad.start)
        issue = Issue(
            ref.path,
            line,
            ref.index,
            "",
            f"invalid UTF-8 at byte offset {bad.start - line_start} of line {line} "
            f"(byte 0x{data[bad.start]:02X}); re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)",
            "invalid_utf8",
        )
        return BadRecord(ref, (issue,), raw, None, span)
    # orjson counts lines from the start of the record; an error "after" the final newline
    # (a line that ends too early) belongs at the end of the last line of the record.
    text = text.rstrip("\r\n")
    n_lines = text.count("\n") + 1
    if err.lineno <= n_lines:
        line, column = first + err.lineno - 1, err.colno
    else:
        line, column = first + n_lines - 1, len(text) - text.rfind("\n")
    if at_eof and not data.endswith(b"\n") and err.msg.startswith("unexpected end of data"):
        code = "truncated_json"
        reason = (
            f"the last {what} is cut off ({err.msg}); the file looks truncated — export it "
            "again or delete the partial record"
        )
    elif not data.strip():
        code = "empty_record"
        reason = f"the {what} is empty; remove it"
    else:
        code = "malformed_json"
        hint = (
            "each line of a .jsonl file must be one complete JSON object"
            if what == "line"
            else "fix the JSON of this record"
        )
        reason = (
            f"invalid JSON: {err.msg} at line {line} column {column} "
            f"(near {preview(text[max(0, err.pos - 15) : err.pos + 15])!r}); {hint}"
        )
    issue = Issue(ref.path, line, ref.index, "", reason, code)
    return BadRecord(ref, (issue,), raw, None, span)
