"""The Gemma 3 chat template: Conversation -> text plus the character spans that carry loss.

Contract (docs/data-api.md)::

    format_conversation(conv, *, train_on_prompt=False) -> FormattedText
    format_prompt(conv) -> str            # for generation; ends "<start_of_turn>model\\n"

Template (Google's Gemma 3 instruct format)::

    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n{text}<end_of_turn>\\n...

``<bos>`` appears once, at the very start. Every turn is ``<start_of_turn>{side}\\n{body}
<end_of_turn>\\n`` where side is ``user`` or ``model``. The text keeps the final ``\\n`` after
the last ``<end_of_turn>``.

Roles, and how each is rendered:

* ``system``: Gemma 3 has no system role. The text of the leading system turn(s) (several are
  joined with ``"\\n\\n"``) goes at the start of the first user turn: ``system + "\\n\\n" +
  user text``. A system turn that appears later in the conversation (not valid data, but it
  must not crash) is rendered as a user turn of its own.
* ``user``: a user turn, text as is.
* ``model``: a model turn, text as is.
* ``tool_call`` (ShareGPT ``function_call``): a model turn whose body is
  ``"```tool_code\\n{text}\\n```"``.
* ``tool_result`` (ShareGPT ``observation``): a user turn whose body is
  ``"```tool_output\\n{text}\\n```"``.

Tool definitions (``Conversation.tools``, a JSON string) follow Google's Gemma 3
function-calling convention (prompted, no special tokens): they go into the first user turn,
after the system text and before the user's text, as :data:`TOOLS_INSTRUCTION` then
``"\\n"`` then the JSON exactly as given, then ``"\\n\\n"``. So the first user turn body is::

    [system + "\\n\\n"] [TOOLS_INSTRUCTION + "\\n" + tools + "\\n\\n"] user text

If the conversation does not start with a user turn (after its system turns) but has system
text or tools, that preamble becomes a user turn of its own (its trailing ``"\\n\\n"``
dropped) before the first turn. Consecutive turns of the same side (rejected by validation)
are rendered one after another, unmerged.

Trained spans (``FormattedText.trained_spans``, ``[start, end)`` character offsets):

* default: each model-side turn's body INCLUDING its ``<end_of_turn>`` (so the model learns to
  stop), excluding the ``<start_of_turn>model\\n`` header and the ``\\n`` that follows;
* ``train_on_prompt=True``: one span, everything after ``<bos>`` to the end of the text.

Speed: this is on the 20,000 rows/s path, so it builds one list of strings and joins it once,
tracking offsets with running lengths; no regular expressions, no copies of the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.types import Conversation, Turn

BOS, START_OF_TURN, END_OF_TURN = "<bos>", "<start_of_turn>", "<end_of_turn>"

USER_HEADER = "<start_of_turn>user\n"
MODEL_HEADER = "<start_of_turn>model\n"
TURN_END = "<end_of_turn>\n"
"""What closes every turn: the ``<end_of_turn>`` token and a newline."""

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "```tool_code\n", "\n```"
TOOL_RESULT_OPEN, TOOL_RESULT_CLOSE = "```tool_output\n", "\n```"

TOOLS_INSTRUCTION = (
    "You have access to the functions defined below in JSON. To call one, reply with only a "
    '```tool_code``` block holding {"name": <function name>, "arguments": <object of '
    "argument values>}. The result is returned to you in a ```tool_output``` block."
)
"""The short instruction put before the tool definitions in the first user turn."""

_USER_HEADER_LEN = len(USER_HEADER)
_MODEL_HEADER_LEN = len(MODEL_HEADER)
_END_LEN = len(END_OF_TURN)
_TURN_END_LEN = len(TURN_END)
_BOS_LEN = len(BOS)


@dataclass(frozen=True, slots=True)
class FormattedText:
    """A conversation rendered with the chat template."""

    text: str
    trained_spans: tuple[tuple[int, int], ...]
    """``[start, end)`` character spans of ``text`` that carry loss, sorted, not overlapping."""


def _body(turn: Turn) -> tuple[bool, str]:
    """(is model side, rendered body) of one non-leading turn."""
    role = turn.role
    if role == "model":
        return True, turn.text
    if role == "user":
        return False, turn.text
    if role == "tool_call":
        return True, TOOL_CALL_OPEN + turn.text + TOOL_CALL_CLOSE
    if role == "tool_result":
        return False, TOOL_RESULT_OPEN + turn.text + TOOL_RESULT_CLOSE
    # A system turn after the first non-system turn: there is no system role to put it in.
    return False, turn.text


def _preamble(conv: Conversation) -> tuple[str, int]:
    """The system + tools prefix of the first user turn, and the index of the first turn
    that is not a leading system turn."""
    turns = conv.turns
    first = 0
    n = len(turns)
    while first < n and turns[first].role == "system":
        first += 1
    parts: list[str] = []
    if first == 1:
        parts.append(turns[0].text)
        parts.append("\n\n")
    elif first > 1:
        parts.append("\n\n".join(t.text for t in turns[:first]))
        parts.append("\n\n")
    if conv.tools:
        parts.append(TOOLS_INSTRUCTION)
        parts.append("\n")
        parts.append(conv.tools)
        parts.append("\n\n")
    return "".join(parts), first


def _render(conv: Conversation, spans: list[tuple[int, int]] | None) -> list[str]:
    """The template pieces (to be joined); appends model-side spans when ``spans`` is a list."""
    preamble, first = _preamble(conv)
    turns = conv.turns
    out: list[str] = [BOS]
    pos = _BOS_LEN
    i = first
    if preamble:
        if i < len(turns) and turns[i].role == "user":
            body = preamble + turns[i].text
            i += 1
        else:
            body = preamble[:-2]  # drop the "\n\n" meant to separate it from user text
        out.append(USER_HEADER)
        out.append(body)
        out.append(TURN_END)
        pos += _USER_HEADER_LEN + len(body) + _TURN_END_LEN
    for turn in turns[i:]:
        is_model, body = _body(turn)
        if is_model:
            out.append(MODEL_HEADER)
            start = pos + _MODEL_HEADER_LEN
            end = start + len(body) + _END_LEN
            if spans is not None:
                spans.append((start, end))
            pos = end + 1  # the "\n" after <end_of_turn>
        else:
            out.append(USER_HEADER)
            pos += _USER_HEADER_LEN + len(body) + _TURN_END_LEN
        out.append(body)
        out.append(TURN_END)
    return out


def format_conversation(conv: Conversation, *, train_on_prompt: bool = False) -> FormattedText:
    """Render ``conv`` with the Gemma 3 template; see the module docstring for the rules."""
    if train_on_prompt:
        text = "".join(_render(conv, None))
        spans: tuple[tuple[int, int], ...] = (
            ((_BOS_LEN, len(text)),) if len(text) > _BOS_LEN else ()
        )
        return FormattedText(text, spans)
    model_spans: list[tuple[int, int]] = []
    text = "".join(_render(conv, model_spans))
    return FormattedText(text, tuple(model_spans))


def format_prompt(conv: Conversation) -> str:
    """The prompt for generation: every turn of ``conv``, then ``<start_of_turn>model\\n``.

    Pass the conversation so far (usually ending with a user turn); the model's reply is
    generated after the returned text and ends with ``<end_of_turn>``.
    """
    out = _render(conv, None)
    out.append(MODEL_HEADER)
    return "".join(out)
