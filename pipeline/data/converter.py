"""Raw record -> :class:`~pipeline.data.types.Conversation`, and back to ShareGPT or ChatML.

Contract (docs/data-api.md): :func:`to_conversation` never raises for bad data; structural
problems (a missing field, a wrong type, an unknown role, an unusable content part) are
:class:`~pipeline.data.types.Issue` values with the exact field path, e.g.
``conversations[2].from``, and then no conversation is returned. What a conversation *says*
(empty text, length, alternation, the last turn, duplicate ids) is checked afterwards, per
chunk, by the pandera schemas in :mod:`pipeline.data.schemas`.

Mapping to canonical turns:

* ShareGPT: the optional ``system`` column becomes a first system turn; ``function_call``
  turns are ``tool_call`` (text = the JSON string as given), ``observation`` turns
  ``tool_result``.
* ChatML/OpenAI: ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts
  (joined with no separator, as Hugging Face chat templates do); an assistant message with
  ``tool_calls`` becomes a ``tool_call`` turn whose text is the JSON of the call
  (``{"name", "arguments"}``, arguments parsed when they are a JSON string) or of the list of
  calls; ``tool`` messages are ``tool_result``.
* Alpaca: ``system`` -> system turn; each ``history`` pair -> user and model turns;
  ``instruction`` + ``"\\n\\n"`` + ``input`` (input only when not blank) -> user; ``output``
  -> model.

``tools`` is kept as a JSON string (a list or object is serialized with
``json.dumps(ensure_ascii=False)``). Column and role names come from the
:class:`~pipeline.data.types.DatasetSpec`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.data.loader import RawRecord
from pipeline.data.types import ROLES, Conversation, DatasetSpec, FormatName, Issue, Role, Turn
from pipeline.errors import DatasetError

# Where a turn's text came from, for issue fields (see FieldNames). Non-negative values are
# message indices (ShareGPT/ChatML) or history positions (Alpaca: pair k -> 2k and 2k + 1).
SRC_SYSTEM = -1
SRC_PROMPT = -2
SRC_RESPONSE = -3


@dataclass(frozen=True, slots=True)
class Converted:
    """What :func:`convert_record` found: the conversation (None when invalid), the issues,
    and for each turn where its text came from (see :class:`FieldNames`)."""

    conversation: Conversation | None
    issues: list[Issue]
    sources: tuple[int, ...]


class FieldNames:
    """Turns a turn's source (an int) back into the field path a person sees in the file."""

    def __init__(self, fmt: FormatName, spec: DatasetSpec) -> None:
        self.fmt = fmt
        self.columns = spec.column_map(fmt)

    def text(self, src: int, role: str) -> str:
        """The field that holds a turn's text, e.g. ``conversations[3].value``."""
        cols = self.columns
        if src == SRC_SYSTEM:
            return cols["system"]
        if self.fmt == "alpaca":
            if src == SRC_PROMPT:
                return cols["prompt"]
            if src == SRC_RESPONSE:
                return cols["response"]
            return f"{cols['history']}[{src // 2}][{src % 2}]"
        if self.fmt == "chatml" and role == "tool_call":
            return f"{cols['messages']}[{src}].tool_calls"
        return f"{cols['messages']}[{src}].{cols['content']}"

    def role(self, src: int, role: str) -> str:
        """The field that decides a turn's role, e.g. ``conversations[3].from``."""
        if self.fmt == "alpaca" or src == SRC_SYSTEM:
            return self.text(src, role)
        return f"{self.columns['messages']}[{src}].{self.columns['role']}"

    def conversation(self) -> str:
        """The field that holds the turns as a whole (``conversations``, ``output``)."""
        return self.columns["response" if self.fmt == "alpaca" else "messages"]

    def id(self) -> str:
        return self.columns["id"]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


class _Builder:
    """Collects turns and issues for one record."""

    __slots__ = ("issues", "record", "sources", "turns")

    def __init__(self, record: RawRecord) -> None:
        self.record = record
        self.turns: list[Turn] = []
        self.sources: list[int] = []
        self.issues: list[Issue] = []

    def issue(self, field: str, code: str, reason: str) -> None:
        ref = self.record.ref
        self.issues.append(Issue(ref.path, ref.line, ref.index, field, reason, code))

    def missing(self, field: str, what: str) -> None:
        self.issue(field, "missing_field", f"{field!r} is missing; add {what}")

    def wrong_type(self, field: str, value: Any, want: str) -> None:
        self.issue(field, "wrong_type", f"{field!r} is {_kind(value)}, but must be {want}")

    def string(self, field: str, value: Any, *, required: bool, what: str) -> str | None:
        """A text field: a string, or an issue (missing when required, wrong type)."""
        if type(value) is str:
            return value
        if value is None:
            if required:
                self.missing(field, what)
        else:
            self.wrong_type(field, value, "a string")
        return None

    def add(self, role: Role, text: str, src: int) -> None:
        self.turns.append(Turn(role, text))
        self.sources.append(src)

    def system(self, value: Any, field: str) -> None:
        text = self.string(field, value, required=False, what="")
        if text is not None and text.strip():  # an empty system column means "no system"
            self.add("system", text, SRC_SYSTEM)

    def tools(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError as err:
                self.issue(
                    field,
                    "bad_tools",
                    f"{field!r} must be JSON (a list of function definitions) but is not valid "
                    f"JSON: {err.msg} at character {err.pos}; fix it or remove the field",
                )
                return None
            return value
        if isinstance(value, list | dict):
            return json.dumps(value, ensure_ascii=False)
        self.wrong_type(field, value, "a JSON string or a list of function definitions")
        return None

    def ident(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value or None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.wrong_type(field, value, "a string or an integer")
        return None

    def result(self, tools: str | None = None, ident: str | None = None) -> Converted:
        if self.issues:
            return Converted(None, self.issues, ())
        if not self.turns:
            # Only reachable when every turn was filtered out, which the callers prevent.
            raise AssertionError("a record without issues must have turns")
        conv = Conversation(tuple(self.turns), tools, ident, self.record.ref)
        return Converted(conv, self.issues, tuple(self.sources))


def _messages(b: _Builder, data: dict[str, Any], key: str, fmt_name: str) -> list[Any] | None:
    msgs = data.get(key)
    if msgs is None:
        b.missing(key, f"a list of {fmt_name} turns")
        return None
    if not isinstance(msgs, list):
        b.wrong_type(key, msgs, f"a list of {fmt_name} turns")
        return None
    if not msgs:
        b.issue(key, "empty_field", f"{key!r} is an empty list; add the turns or drop the row")
        return None
    return msgs


def _role(
    b: _Builder, msg: dict[str, Any], field: str, key: str, roles: dict[str, Role]
) -> Role | None:
    name = msg.get(key)
    if type(name) is not str:
        if name is None:
            b.missing(field, f"the speaker ({', '.join(roles)})")
        else:
            b.wrong_type(field, name, f"a role name ({', '.join(roles)})")
        return None
    role = roles.get(name)
    if role is None:
        b.issue(
            field,
            "unknown_role",
            f"unknown role {name!r}; use one of {', '.join(repr(r) for r in roles)}, or map it "
            f"with DatasetSpec.roles (e.g. roles={{{name!r}: 'model'}})",
        )
    return role


def _sharegpt(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    b = _Builder(record)
    data = record.data
    mkey, rkey, ckey = cols["messages"], cols["role"], cols["content"]
    if cols["system"] in data:
        b.system(data[cols["system"]], cols["system"])
    msgs = _messages(b, data, mkey, f"{rkey!r}/{ckey!r}")
    turns, sources = b.turns, b.sources
    for i, msg in enumerate(msgs or ()):
        if type(msg) is dict:  # the fast path: a well-formed turn
            name, text = msg.get(rkey), msg.get(ckey)
            role = roles.get(name) if type(name) is str else None
            if role is not None and type(text) is str:
                turns.append(Turn(role, text))
                sources.append(i)
                continue
        else:
            b.wrong_type(f"{mkey}[{i}]", msg, f"an object with {rkey!r} and {ckey!r}")
            continue
        role = _role(b, msg, f"{mkey}[{i}].{rkey}", rkey, roles)
        text = b.string(
            f"{mkey}[{i}].{ckey}", msg.get(ckey), required=True, what="the text of the turn"
        )
    return b.result(
        b.tools(data.get(cols["tools"]), cols["tools"]), b.ident(data.get(cols["id"]), cols["id"])
    )


def _chatml_content(b: _Builder, content: Any, field: str) -> str | None:
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


def _tool_calls(b: _Builder, calls: list[Any], field: str) -> str | None:
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


def _chatml(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    b = _Builder(record)
    data = record.data
    mkey, rkey, ckey = cols["messages"], cols["role"], cols["content"]
    b.system(data.get(cols["system"]), cols["system"])
    msgs = _messages(b, data, mkey, f"{rkey!r}/{ckey!r}")
    for i, msg in enumerate(msgs or ()):
        if type(msg) is not dict:
            b.wrong_type(f"{mkey}[{i}]", msg, f"an object with {rkey!r} and {ckey!r}")
            continue
        role = _role(b, msg, f"{mkey}[{i}].{rkey}", rkey, roles)
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


def _alpaca(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    b = _Builder(record)
    data = record.data
    pkey, qkey, rkey, hkey = cols["prompt"], cols["query"], cols["response"], cols["history"]
    if cols["system"] in data:
        b.system(data[cols["system"]], cols["system"])
    history = data.get(hkey)
    if history is not None:
        if not isinstance(history, list):
            b.wrong_type(hkey, history, "a list of [prompt, response] pairs")
        else:
            for k, pair in enumerate(history):
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    b.wrong_type(f"{hkey}[{k}]", pair, "a [prompt, response] pair (2 strings)")
                    continue
                prompt = b.string(f"{hkey}[{k}][0]", pair[0], required=True, what="the prompt")
                reply = b.string(f"{hkey}[{k}][1]", pair[1], required=True, what="the response")
                if prompt is not None and reply is not None:
                    b.add("user", prompt, 2 * k)
                    b.add("model", reply, 2 * k + 1)
    prompt = b.string(pkey, data.get(pkey), required=True, what="the instruction text")
    query = b.string(qkey, data.get(qkey), required=False, what="")
    response = b.string(rkey, data.get(rkey), required=True, what="the expected answer")
    if prompt is not None and response is not None:
        if query and query.strip():
            prompt = f"{prompt}\n\n{query}" if prompt.strip() else query
        b.add("user", prompt, SRC_PROMPT)
        b.add("model", response, SRC_RESPONSE)
    return b.result(None, b.ident(data.get(cols["id"]), cols["id"]))


_CONVERTERS = {"sharegpt": _sharegpt, "chatml": _chatml, "alpaca": _alpaca}


class Converter:
    """Converts the records of one file: the format and its names are looked up once."""

    def __init__(self, fmt: FormatName, spec: DatasetSpec) -> None:
        self.fmt = fmt
        self.names = FieldNames(fmt, spec)
        self._columns = spec.column_map(fmt)
        self._roles = spec.role_map(fmt)
        self._convert = _CONVERTERS[fmt]
        wrong = {k: v for k, v in self._roles.items() if v not in ROLES}
        if wrong:
            raise DatasetError(
                f"DatasetSpec.roles maps {wrong} to roles that do not exist",
                hint=f"map each role name to one of {', '.join(ROLES)}",
            )

    def __call__(self, record: RawRecord) -> Converted:
        return self._convert(record, self._columns, self._roles)


def convert_record(record: RawRecord, fmt: FormatName, spec: DatasetSpec) -> Converted:
    """:func:`to_conversation` plus where each turn's text came from (for issue fields)."""
    return Converter(fmt, spec)(record)


def to_conversation(
    record: RawRecord, fmt: FormatName, spec: DatasetSpec
) -> tuple[Conversation | None, list[Issue]]:
    """Convert one raw record; the conversation is None when there are issues."""
    converted = convert_record(record, fmt, spec)
    return converted.conversation, converted.issues


# ------------------------------------------------------------------------------- writing

_SHAREGPT_ROLE = {
    "system": "system",
    "user": "human",
    "model": "gpt",
    "tool_call": "function_call",
    "tool_result": "observation",
}
_CHATML_ROLE = {"system": "system", "user": "user", "model": "assistant", "tool_result": "tool"}


def conversation_to_sharegpt(conv: Conversation) -> dict[str, Any]:
    """ShareGPT with the default names; a system prompt is the first ``{"from": "system"}``
    turn (read back as such), ``tools`` the JSON string, ``id`` kept when there is one."""
    row: dict[str, Any] = {
        "conversations": [{"from": _SHAREGPT_ROLE[t.role], "value": t.text} for t in conv.turns]
    }
    if conv.tools is not None:
        row["tools"] = conv.tools
    if conv.id is not None:
        row["id"] = conv.id
    return row


def _openai_calls(text: str) -> list[dict[str, Any]] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    calls = value if isinstance(value, list) else [value]
    out: list[dict[str, Any]] = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        args = call.get("arguments", {})
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def conversation_to_chatml(conv: Conversation) -> dict[str, Any]:
    """OpenAI-style ``{"messages": [{"role", "content"}...]}``; a tool call is an assistant
    message with ``tool_calls`` (arguments as a JSON string, as OpenAI sends them), ``tools``
    the parsed list when it is valid JSON."""
    messages: list[dict[str, Any]] = []
    for turn in conv.turns:
        if turn.role == "tool_call":
            calls = _openai_calls(turn.text)
            if calls is not None:
                messages.append({"role": "assistant", "content": None, "tool_calls": calls})
                continue
            # Not a {"name", "arguments"} object: keep the text rather than invent a call.
            messages.append({"role": "assistant", "content": turn.text})
            continue
        messages.append({"role": _CHATML_ROLE[turn.role], "content": turn.text})
    row: dict[str, Any] = {"messages": messages}
    if conv.tools is not None:
        try:
            row["tools"] = orjson.loads(conv.tools)
        except orjson.JSONDecodeError:
            row["tools"] = conv.tools
    if conv.id is not None:
        row["id"] = conv.id
    return row
