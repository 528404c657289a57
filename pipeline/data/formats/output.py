"""Conversations -> rows: ShareGPT or ChatML/OpenAI JSON objects (for JSONL output)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from pipeline.data.types import Conversation

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
