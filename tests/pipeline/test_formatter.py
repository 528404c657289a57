"""The Gemma 3 chat template, pinned by exact strings."""

from __future__ import annotations

import time

import pytest

from pipeline.data.formatter import (
    BOS,
    END_OF_TURN,
    TOOLS_INSTRUCTION,
    FormattedText,
    format_conversation,
    format_prompt,
)
from pipeline.data.types import Conversation, Role, Turn


def conv(*turns: tuple[Role, str], tools: str | None = None) -> Conversation:
    return Conversation(tuple(Turn(role, text) for role, text in turns), tools=tools)


def trained(f: FormattedText) -> list[str]:
    return [f.text[a:b] for a, b in f.trained_spans]


def test_single_turn() -> None:
    f = format_conversation(conv(("user", "Hi"), ("model", "Hello!")))
    assert f.text == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    assert trained(f) == ["Hello!<end_of_turn>"]


def test_multi_turn() -> None:
    f = format_conversation(conv(("user", "a"), ("model", "b"), ("user", "c"), ("model", "d\ne")))
    assert f.text == (
        "<bos>"
        "<start_of_turn>user\na<end_of_turn>\n"
        "<start_of_turn>model\nb<end_of_turn>\n"
        "<start_of_turn>user\nc<end_of_turn>\n"
        "<start_of_turn>model\nd\ne<end_of_turn>\n"
    )
    assert trained(f) == ["b<end_of_turn>", "d\ne<end_of_turn>"]


def test_system_is_folded_into_first_user_turn() -> None:
    f = format_conversation(conv(("system", "Be brief."), ("user", "Hi"), ("model", "Yo")))
    assert f.text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nYo<end_of_turn>\n"
    )
    assert trained(f) == ["Yo<end_of_turn>"]


def test_tools_tool_call_and_tool_result() -> None:
    tools = '[{"name": "f", "parameters": {}}]'
    f = format_conversation(
        conv(
            ("system", "S"),
            ("user", "Call f"),
            ("tool_call", '{"name": "f", "arguments": {}}'),
            ("tool_result", '{"ok": true}'),
            ("model", "Done."),
            tools=tools,
        )
    )
    assert f.text == (
        "<bos><start_of_turn>user\n"
        f"S\n\n{TOOLS_INSTRUCTION}\n{tools}\n\nCall f<end_of_turn>\n"
        "<start_of_turn>model\n```tool_code\n"
        '{"name": "f", "arguments": {}}\n```<end_of_turn>\n'
        "<start_of_turn>user\n```tool_output\n"
        '{"ok": true}\n```<end_of_turn>\n'
        "<start_of_turn>model\nDone.<end_of_turn>\n"
    )
    assert trained(f) == [
        '```tool_code\n{"name": "f", "arguments": {}}\n```<end_of_turn>',
        "Done.<end_of_turn>",
    ]


def test_tools_instruction_wording_is_pinned() -> None:
    # Changing it changes every tool dataset's tokens; do it on purpose only.
    assert TOOLS_INSTRUCTION == (
        "You have access to the functions defined below in JSON. To call one, reply with only "
        'a ```tool_code``` block holding {"name": <function name>, "arguments": <object of '
        "argument values>}. The result is returned to you in a ```tool_output``` block."
    )


def test_tools_without_system() -> None:
    f = format_conversation(conv(("user", "u"), ("model", "m"), tools="[]"))
    assert f.text.startswith(
        f"<bos><start_of_turn>user\n{TOOLS_INSTRUCTION}\n[]\n\nu<end_of_turn>\n"
    )


def test_train_on_prompt_trains_everything_after_bos() -> None:
    c = conv(("system", "S"), ("user", "Hi"), ("model", "Yo"))
    f = format_conversation(c, train_on_prompt=True)
    assert f.text == format_conversation(c).text
    assert f.trained_spans == ((len(BOS), len(f.text)),)
    assert trained(f) == [
        "<start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
    ]


def test_format_prompt() -> None:
    c = conv(("system", "S"), ("user", "Hi"), ("model", "Yo"), ("user", "More"))
    assert format_prompt(c) == (
        "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nYo<end_of_turn>\n"
        "<start_of_turn>user\nMore<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_several_system_turns_are_joined() -> None:
    f = format_conversation(conv(("system", "A"), ("system", "B"), ("user", "u"), ("model", "m")))
    assert f.text.startswith("<bos><start_of_turn>user\nA\n\nB\n\nu<end_of_turn>\n")


@pytest.mark.parametrize(
    "turns",
    [
        (("user", "a"), ("user", "b"), ("model", "c"), ("model", "d")),
        (("model", "first"),),
        (("system", "only system"),),
        (("system", "S"), ("model", "m")),
        (("tool_result", "r"), ("tool_call", "c"), ("tool_call", "c2")),
        (("user", "u"), ("system", "late system"), ("model", "m")),
        (),
    ],
)
def test_odd_conversations_do_not_crash_and_spans_are_model_text(
    turns: tuple[tuple[Role, str], ...],
) -> None:
    f = format_conversation(conv(*turns))
    assert f.text.startswith(BOS)
    for a, b in f.trained_spans:
        assert f.text[b - len(END_OF_TURN) : b] == END_OF_TURN
        assert f.text[:a].endswith("<start_of_turn>model\n")
    n_model = sum(role in ("model", "tool_call") for role, _ in turns)
    assert len(f.trained_spans) == n_model


def test_preamble_without_leading_user_turn_is_its_own_turn() -> None:
    f = format_conversation(conv(("system", "S"), ("model", "m"), tools="[]"))
    assert f.text == (
        f"<bos><start_of_turn>user\nS\n\n{TOOLS_INSTRUCTION}\n[]<end_of_turn>\n"
        "<start_of_turn>model\nm<end_of_turn>\n"
    )
    assert trained(f) == ["m<end_of_turn>"]


def test_spans_with_non_ascii_text() -> None:
    f = format_conversation(conv(("user", "日本語 🎉"), ("model", "はい 👍🏽\t  x")))
    assert trained(f) == ["はい 👍🏽\t  x<end_of_turn>"]


def test_fast_enough_for_the_20k_rows_per_second_path() -> None:
    c = conv(("system", "S" * 50), ("user", "u" * 300), ("model", "m" * 800))
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        format_conversation(c)
    elapsed = time.perf_counter() - start
    # Measured ~400k rows/s; the bound leaves room for a loaded CI machine.
    assert n / elapsed > 40_000, f"{n / elapsed:.0f} rows/s"
