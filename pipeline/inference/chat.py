"""A multi-turn chat with Gemma 3 over any backend: history, template, streaming, stop.

``ChatSession(backend, system=..., sampling=Sampling(...))`` keeps the turns of one
conversation and renders them with the training template (:func:`pipeline.data.formatter.
format_prompt`, the very code the trainer uses), so a fine-tuned model sees at chat time
exactly what it saw in training. ``session.stream(text)`` yields :class:`ChatEvent`s:

- :class:`ContextTrimmed` when the oldest turns no longer fit the model's context (they are
  dropped from what the model sees, never from the transcript, and the event says how many);
- :class:`TextDelta` pieces of the reply as tokens arrive (stop tokens are never part of the
  text: backends end on ``<eos>``/``<end_of_turn>`` without emitting them);
- one :class:`ReplyDone` with the whole reply and its numbers (first-token latency, decode
  tokens/s, why it ended).

``should_stop`` is polled between tokens; a stopped reply keeps what was generated (marked
``stop_reason == "stopped"``). Errors the user can act on (a message longer than the context,
a model file that cannot be read, a worker that died) raise :class:`pipeline.errors.ChatError`
before the history changes, so the session stays usable.

A backend (:class:`Backend`) turns one rendered prompt into streamed text; the Keras/JAX one
lives in :mod:`.keras_inference`, the LiteRT ones (LiteRT-LM engine, TFLite interpreter) in
:mod:`.litert_inference`. Nothing here imports JAX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from pipeline.data.formatter import BOS, END_OF_TURN, START_OF_TURN, format_prompt
from pipeline.data.types import Conversation, Turn
from pipeline.errors import ChatError

StopReason = Literal["stop_token", "max_tokens", "stopped", "context"]
"""Why a reply ended: a stop token, the max-new-tokens budget, the user, or the context."""

STOP_TEXTS = (END_OF_TURN, "<eos>")
MIN_REPLY_TOKENS = 16
"""A message is refused when it leaves fewer tokens than this for the reply."""


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature == 0`` is greedy (top-k/top-p unused)."""

    temperature: float = 0.0
    top_k: int = 64
    """0 = no top-k cut (the whole vocabulary, then top-p)."""
    top_p: float = 0.95
    seed: int | None = None
    """None: a fresh random seed per session (shown in the stats)."""
    max_new_tokens: int = 256

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def describe(self) -> str:
        if self.greedy:
            return f"greedy, up to {self.max_new_tokens} tokens"
        return (
            f"temperature {self.temperature:g}, top-k {self.top_k or 'off'}, top-p "
            f"{self.top_p:g}, seed {self.seed}, up to {self.max_new_tokens} tokens"
        )


def check_sampling(s: Sampling) -> Sampling:
    """``s`` when every value is usable, else :class:`ChatError` naming each bad one."""
    problems = []
    if not (s.temperature >= 0.0) or s.temperature > 100:
        problems.append(f"temperature {s.temperature} must be between 0 (greedy) and 100")
    if s.top_k < 0:
        problems.append(f"top-k {s.top_k} must be 0 (off) or a positive count")
    if not (0.0 < s.top_p <= 1.0):
        problems.append(f"top-p {s.top_p} must be above 0 and at most 1")
    if s.max_new_tokens < 1:
        problems.append(f"max new tokens {s.max_new_tokens} must be at least 1")
    if s.seed is not None and not (0 <= s.seed < 2**32):
        problems.append(f"seed {s.seed} must be between 0 and 2**32 - 1")
    if problems:
        raise ChatError("; ".join(problems), hint="Fix the sampling settings and send again.")
    return s


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the reply (append it to what came before)."""

    text: str


@dataclass(frozen=True, slots=True)
class ContextTrimmed:
    """The oldest ``dropped`` turns (user and model) are left out of the prompt from now on."""

    dropped: int
    kept: int
    prompt_tokens: int
    context: int

    def describe(self) -> str:
        return (
            f"The conversation outgrew the {self.context}-token context: the oldest "
            f"{self.dropped} turn(s) are no longer shown to the model ({self.kept} kept)."
        )


@dataclass(frozen=True, slots=True)
class ReplyStats:
    prompt_tokens: int
    new_tokens: int
    first_token_s: float | None
    """From sending the prompt to the first reply token (prefill + one decode step)."""
    total_s: float
    stop_reason: StopReason
    prefill_tokens: int | None = None
    """Tokens actually run through prefill (fewer than prompt_tokens when a KV cache of the
    conversation so far was reused); None when the backend does not say."""

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s after the first one."""
        if self.first_token_s is None or self.new_tokens < 2:
            return None
        span = self.total_s - self.first_token_s
        return (self.new_tokens - 1) / span if span > 0 else None

    def describe(self) -> str:
        parts = [f"{self.new_tokens} tokens"]
        if self.first_token_s is not None:
            parts.append(f"first token {self.first_token_s:.2f} s")
        rate = self.decode_tokens_per_s
        if rate is not None:
            parts.append(f"{rate:.1f} tok/s")
        parts.append(
            {
                "stop_token": "ended by the model",
                "max_tokens": "hit max new tokens",
                "stopped": "stopped",
                "context": "context full",
            }[self.stop_reason]
        )
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class ReplyDone:
    text: str
    stats: ReplyStats


ChatEvent = TextDelta | ContextTrimmed | ReplyDone


@dataclass(frozen=True, slots=True)
class GenDelta:
    """From a backend: reply text, and how many tokens it covers."""

    text: str
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class GenDone:
    """From a backend: the generation ended."""

    prompt_tokens: int
    new_tokens: int
    first_token_s: float | None
    total_s: float
    stop_reason: StopReason
    prefill_tokens: int | None = None


class Backend(Protocol):
    """One loaded model that continues a rendered prompt.

    ``prompt`` is the template text, starting with ``"<bos>"`` and ending with
    ``"<start_of_turn>model\\n"``. ``generate`` yields :class:`GenDelta` pieces then exactly
    one :class:`GenDone`; it stops before a stop token (never yielding its text), after
    ``sampling.max_new_tokens`` tokens, or soon after ``should_stop()`` turns True. Errors are
    :class:`ChatError`. Backends are used from one thread at a time."""

    kind: str
    """"keras", "litert_lm" or "interpreter"."""
    label: str
    """One line for the UI: what model, where it runs, in what precision."""
    context_length: int
    """Tokens the backend holds: prompt and reply together."""

    def count_tokens(self, prompt: str) -> int: ...

    def generate(
        self, prompt: str, sampling: Sampling, should_stop: Callable[[], bool]
    ) -> Iterator[GenDelta | GenDone]: ...

    def close(self) -> None: ...


def _never() -> bool:
    return False


# --------------------------------------------------------------------------- session


@dataclass
class Exchange:
    """One user message and the model's reply to it."""

    user: str
    reply: str
    stats: ReplyStats | None = None


@dataclass
class ChatSession:
    backend: Backend
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[Exchange] = field(default_factory=list)
    first_shown: int = 0
    """Index of the oldest exchange still shown to the model (older ones were trimmed)."""

    def __post_init__(self) -> None:
        check_sampling(self.sampling)

    def _seeded(self) -> Sampling:
        """The sampling settings, with a random seed drawn (and kept, so it can be shown and
        reused) when sampling is on and no seed was given."""
        if self.sampling.seed is None and not self.sampling.greedy:
            self.sampling = replace(self.sampling, seed=int.from_bytes(os.urandom(4), "little"))
        return self.sampling

    # ---- the prompt

    def conversation(self, pending: str | None = None, *, start: int = 0) -> Conversation:
        """The exchanges from ``start`` (plus ``pending`` as the last user turn) as a
        :class:`Conversation`, with the system prompt as its leading system turn."""
        turns: list[Turn] = []
        if self.system:
            turns.append(Turn("system", self.system))
        for ex in self.history[start:]:
            turns.append(Turn("user", ex.user))
            turns.append(Turn("model", ex.reply))
        if pending is not None:
            turns.append(Turn("user", pending))
        return Conversation(tuple(turns))

    def render(self, pending: str, *, start: int | None = None) -> str:
        """The prompt the model sees for ``pending``: the template of the shown history."""
        first = self.first_shown if start is None else start
        return format_prompt(self.conversation(pending, start=first))

    def _fit(self, text: str) -> tuple[str, int, int, int]:
        """(prompt, its tokens, first exchange shown, max new tokens) for ``text``, dropping
        the oldest exchanges until prompt + reply budget fit the context."""
        ctx = self.backend.context_length
        budget = self.sampling.max_new_tokens
        start = self.first_shown
        while True:
            prompt = self.render(text, start=start)
            n = self.backend.count_tokens(prompt)
            if n + budget <= ctx or start >= len(self.history):
                break
            start += 1
        if n + budget > ctx:
            room = ctx - n
            if room < MIN_REPLY_TOKENS:
                alone = "" if start == len(self.history) and not self.history else " alone"
                raise ChatError(
                    f"This message{alone} is {n} tokens with the template"
                    f"{' and system prompt' if self.system else ''}; the model holds "
                    f"{ctx} tokens and needs at least {MIN_REPLY_TOKENS} for a reply.",
                    hint="Shorten the message (or the system prompt), or open the model "
                    "with a longer context.",
                )
            budget = room
        return prompt, n, start, budget

    # ---- talking

    def stream(
        self, text: str, *, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[ChatEvent]:
        """Send ``text``; yields events (see the module doc). The exchange joins the history
        when the reply ends (also when stopped); on an error nothing changes."""
        if not text.strip():
            raise ChatError("The message is empty.", hint="Type something to send.")
        stop = should_stop or _never
        check_sampling(self.sampling)
        prompt, n, start, budget = self._fit(text)
        if start > self.first_shown:
            yield ContextTrimmed(
                dropped=start,
                kept=len(self.history) - start,
                prompt_tokens=n,
                context=self.backend.context_length,
            )
        sampling = replace(self._seeded(), max_new_tokens=budget)
        if sampling.seed is not None:
            # a different but reproducible stream for every turn of a seeded session
            sampling = replace(sampling, seed=(sampling.seed + len(self.history)) % 2**32)
        pieces: list[str] = []
        done: GenDone | None = None
        for ev in self.backend.generate(prompt, sampling, stop):
            if isinstance(ev, GenDelta):
                if ev.text:
                    pieces.append(ev.text)
                    yield TextDelta(ev.text)
            else:
                done = ev
        if done is None:
            raise ChatError("The model ended without finishing its reply.")
        reason = done.stop_reason
        if reason == "max_tokens" and budget < self.sampling.max_new_tokens:
            reason = "context"
        reply = "".join(pieces)
        stats = ReplyStats(
            prompt_tokens=done.prompt_tokens,
            new_tokens=done.new_tokens,
            first_token_s=done.first_token_s,
            total_s=done.total_s,
            stop_reason=reason,
            prefill_tokens=done.prefill_tokens,
        )
        self.first_shown = start
        self.history.append(Exchange(text, reply, stats))
        yield ReplyDone(reply, stats)

    def send(
        self,
        text: str,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ReplyDone:
        """``stream`` to the end; ``on_text`` gets each delta. Returns the final event."""
        last: ReplyDone | None = None
        for ev in self.stream(text, should_stop=should_stop):
            if isinstance(ev, TextDelta) and on_text is not None:
                on_text(ev.text)
            elif isinstance(ev, ReplyDone):
                last = ev
        assert last is not None
        return last

    def reset(self) -> None:
        """Forget the conversation (the system prompt and sampling stay)."""
        self.history.clear()
        self.first_shown = 0

    def undo(self) -> Exchange | None:
        """Drop the last exchange (e.g. to ask again); returns it."""
        if not self.history:
            return None
        ex = self.history.pop()
        self.first_shown = min(self.first_shown, len(self.history))
        return ex

    # ---- transcript

    def transcript(self) -> Conversation:
        """The whole conversation, trimmed turns included."""
        return self.conversation()

    def save_jsonl(self, path: str | os.PathLike[str], *, append: bool = True) -> Path:
        """Write the transcript as one ShareGPT JSON line (the format the Dataset screen and
        ``gemma-tui data`` read, system prompt first). Appends by default, so a file can
        collect good conversations; the line is written whole (one ``write`` + fsync)."""
        from pipeline.data.formats.output import conversation_to_sharegpt

        if not self.history:
            raise ChatError("There is nothing to save yet.", hint="Send a message first.")
        out = Path(path)
        if out.exists() and out.is_dir():
            raise ChatError(f"{out} is a folder.", hint="Give a file name ending in .jsonl.")
        line = json.dumps(conversation_to_sharegpt(self.transcript()), ensure_ascii=False) + "\n"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            prefix = ""
            if append and out.exists() and out.stat().st_size:
                with open(out, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    prefix = "" if f.read(1) == b"\n" else "\n"
            with open(out, "a" if append else "w", encoding="utf-8") as f:
                f.write(prefix + line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ChatError(
                f"cannot write {out}: {exc.strerror or exc}",
                hint="Pick a folder you can write to.",
            ) from exc
        return out


def strip_stop_text(text: str) -> str:
    """``text`` without a trailing stop token's text (for runtimes that return it)."""
    for stop in STOP_TEXTS:
        if text.endswith(stop):
            return text[: -len(stop)]
    return text


def leading_bos(prompt: str) -> str:
    """``prompt`` without its leading ``"<bos>"`` (for runtimes that add BOS themselves)."""
    if not prompt.startswith(BOS):
        raise ChatError("internal: a chat prompt must start with <bos>")
    return prompt[len(BOS) :]


__all__ = [
    "START_OF_TURN",
    "Backend",
    "ChatEvent",
    "ChatSession",
    "ContextTrimmed",
    "Exchange",
    "GenDelta",
    "GenDone",
    "ReplyDone",
    "ReplyStats",
    "Sampling",
    "StopReason",
    "TextDelta",
    "check_sampling",
    "leading_bos",
    "strip_stop_text",
]
