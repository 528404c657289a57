"""ChatML/OpenAI records -> conversations.

``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts (joined with no
separator, as Hugging Face chat templates do); an assistant message with ``tool_calls`` becomes
a ``tool_call`` turn whose text is the JSON of the call (``{"name", "arguments"}``, arguments
parsed when they are a JSON string) or of the list of calls; ``tool`` messages are
``tool_result``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson

from pipeline.data.formats.base import Converted, RecordBuilder, message_list, message_role
from pipeline.data.readers.records import RawRecord
from pipeline.data.types import Role


def _chatml_content(b: RecordBuilder, content: Any, field: str) -> str | None:
    if type(content) is str:
        return content
    if not isinstance(content, list):
        if content is None:
            b.missing(field, "the text of the message")
        else:
            b.wrong_type(field, content, 'a string or a list of {"type": "text"} parts')
        return None
    texts: list[str] = []
    ok = True
    for j, part in enumerate(content):
        pfield = f"{field}[{j}]"
        if type(part) is not dict:
            b.wrong_type(pfield, part, 'a {"type": "text", "text": ...} part')
            ok = False
            continue
        kind = part.get("type", "text")
        if kind != "text":
            b.issue(
                f"{pfield}.type",
                "unsupported_content",
                f"content part of type {kind!r} is not supported (only text is); remove it or "
                "describe it in text",
            )
            ok = False
            continue
        text = b.string(f"{pfield}.text", part.get("text"), required=True, what="the text")
        if text is None:
            ok = False
        else:
            texts.append(text)
    return "".join(texts) if ok else None


def _tool_calls(b: RecordBuilder, calls: list[Any], field: str) -> str | None:
    out: list[dict[str, Any]] = []
    for j, call in enumerate(calls):
        cfield = f"{field}[{j}]"
        if type(call) is not dict:
            b.wrong_type(cfield, call, "an object with a function name and arguments")
            return None
        fn = call.get("function", call)  # OpenAI nests it; some exports flatten it
        ffield = f"{cfield}.function" if "function" in call else cfield
        if type(fn) is not dict:
            b.wrong_type(ffield, fn, "an object with 'name' and 'arguments'")
            return None
        name = b.string(f"{ffield}.name", fn.get("name"), required=True, what="the function name")
        if name is None:
            return None
        args = fn.get("arguments", {})
        if isinstance(args, str):
            # Unparseable arguments stay the string they are: train on what the data says.
            with contextlib.suppress(orjson.JSONDecodeError):
                args = orjson.loads(args) if args.strip() else {}
        out.append({"name": name, "arguments": args})
    return json.dumps(out[0] if len(out) == 1 else out, ensure_ascii=False)


def convert_chatml(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    """One ChatML record, with the columns and role map of its DatasetSpec."""
    b = RecordBuilder(record)
    data = record.data
    mkey, rkey, ckey = cols["messages"], cols["role"], cols["content"]
    b.system(data.get(cols["system"]), cols["system"])
    msgs = message_list(b, data, mkey, f"{rkey!r}/{ckey!r}")
    for i, msg in enumerate(msgs or ()):
        if type(msg) is not dict:
            b.wrong_type(f"{mkey}[{i}]", msg, f"an object with {rkey!r} and {ckey!r}")
            continue
        role = message_role(b, msg, f"{mkey}[{i}].{rkey}", rkey, roles)
        calls = msg.get("tool_calls")
        cfield = f"{mkey}[{i}].{ckey}"
        if role == "model" and calls:
            if not isinstance(calls, list):
                b.wrong_type(f"{mkey}[{i}].tool_calls", calls, "a list of tool calls")
                continue
            content = msg.get(ckey)
            if content not in (None, "", []):
                b.issue(
                    cfield,
                    "content_with_tool_calls",
                    "the assistant message has both text and tool_calls; a Gemma turn is either "
                    "a reply or a function call — empty the content, or put the text in the "
                    "next assistant reply",
                )
                continue
            text = _tool_calls(b, calls, f"{mkey}[{i}].tool_calls")
            if text is not None:
                b.add("tool_call", text, i)
            continue
        text = _chatml_content(b, msg.get(ckey), cfield)
        if role is not None and text is not None:
            b.add(role, text, i)
    return b.result(
        b.tools(data.get(cols["tools"]), cols["tools"]), b.ident(data.get(cols["id"]), cols["id"])
    )
