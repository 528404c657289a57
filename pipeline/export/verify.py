"""Proof that a bundle answers like the model it came from.

On a fixed set of prompts (Gemma 3 turn template, the same one the trainer used), the merged
model's greedy continuation in JAX (float32) is the reference. The export worker runs the
converted model on the CPU two ways:

* ``interpreter``: the ``.task``'s own TFLite model, tokenizer and METADATA stop tokens (or the
  ``.tflite`` when no ``.task`` was made) in an ``ai_edge_litert`` signature loop, giving token
  ids: a free-running greedy reply, and the teacher-forced predictions (the reference's tokens
  fed back one by one, the argmax after each);
* ``litert_lm``: LiteRT-LM's engine on each bundle file (its own template, tokenizer and stop
  handling), giving text.

What is checked, per bundle and runtime:

1. **Fidelity** (interpreter): *next-token agreement*, the share of reference positions where
   the bundle's teacher-forced argmax equals the reference token (the stop token included
   when the reference stopped). It does not cascade: one near-tie flipped by quantization
   costs one position, not the rest of the reply. Gated by the threshold (e.g. 90% for int8).
2. **Greedy replies** (every runtime): the free-running *token agreement* with the reference
   and the *first divergence* position, reported (float32 and float16 should be identical).
3. **Packaging** (LiteRT-LM): each engine reply must reproduce the interpreter's reply to the
   same prompt (same model, so any difference means a wrong template, tokenizer or stop
   token); gated by the threshold.
4. **Stop test**: where the reply being matched ended with a stop token and the runtime
   reproduced it up to there, the runtime must end exactly there by itself. Any failure
   fails the export.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a LoRA adapter is.",
    "Give me three tips for a good night's sleep.",
)

MIN_AGREEMENT = {
    "none": 0.98,
    "fp16": 0.95,
    "dynamic_int8": 0.90,
    "weight_only_int8": 0.90,
    "dynamic_int4_block32": 0.75,
    "dynamic_int4_block128": 0.75,
}
"""Default thresholds of next-token agreement per quantization (``--min-agreement``
overrides). Float32 and float16 should agree exactly; 8-bit flips a near-tie now and then;
4-bit on a small model drifts more."""

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class Reference:
    prompt: str
    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]
    """The greedy continuation, stop token excluded."""
    stopped: int | None
    """The stop token id that ended it, or None when it ran to ``max_new_tokens``."""


@dataclass(frozen=True)
class PromptResult:
    prompt: str
    expected: tuple[int, ...]
    got: tuple[int, ...]
    agreement: float
    """Free-running: matching positions over the longer of the two replies."""
    first_divergence: int | None
    """First position where the two differ (None: identical, stop included)."""
    expected_stop: bool
    got_stop: bool
    stop_test: str
    """``pass``, ``fail`` or ``n/a`` (no stop to test, or they diverged before it)."""
    expected_text: str = ""
    got_text: str = ""
    seconds: float | None = None
    forced_agreement: float | None = None
    """Teacher-forced next-token agreement (interpreter only)."""


@dataclass(frozen=True)
class RuntimeReport:
    bundle: str
    """``task``, ``litertlm`` or ``tflite``."""
    runtime: str
    """``interpreter`` or ``litert_lm``."""
    prompts: tuple[PromptResult, ...]
    agreement: float
    """Free-running greedy token agreement with the reference (reported)."""
    gate: float
    """What the threshold applies to: next-token agreement (interpreter) or agreement with
    the interpreter's replies (LiteRT-LM)."""
    gate_name: str
    stop_pass: int
    stop_fail: int
    passed: bool


@dataclass(frozen=True)
class VerifyReport:
    quant: str
    threshold: float
    max_new_tokens: int
    runtimes: tuple[RuntimeReport, ...]
    passed: bool
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the gated number per runtime and the verdict."""
        parts = []
        for r in self.runtimes:
            tested = r.stop_pass + r.stop_fail
            stops = f", stop {r.stop_pass}/{tested}" if tested else ""
            parts.append(f"{r.bundle}/{r.runtime} {r.gate_name} {r.gate:.1%}{stops}")
        verdict = "passed" if self.passed else "FAILED"
        return f"verify {verdict} (threshold {self.threshold:.0%}): " + "; ".join(parts)


def compare(
    ref: Reference,
    got: Sequence[int],
    got_stopped: bool,
    *,
    max_new_tokens: int,
) -> PromptResult:
    """Agreement, first divergence and the stop test of one prompt (token ids)."""
    expected = list(ref.ids)
    n = max(len(expected), len(got), 1)
    matches = sum(1 for a, b in zip(expected, got, strict=False) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    if first is None and len(expected) != len(got):
        first = min(len(expected), len(got))
    if first is None and (ref.stopped is not None) != got_stopped:
        first = len(expected)
    if not expected and not got:
        agreement = 1.0 if (ref.stopped is not None) == got_stopped else 0.0
    else:
        agreement = matches / n
    if ref.stopped is None or list(got[: len(expected)]) != expected:
        stop_test = "n/a"
    else:
        stop_test = "pass" if got_stopped and len(got) == len(expected) else "fail"
    return PromptResult(
        prompt=ref.prompt,
        expected=tuple(expected),
        got=tuple(got),
        agreement=agreement,
        first_divergence=first,
        expected_stop=ref.stopped is not None,
        got_stop=got_stopped,
        stop_test=stop_test,
    )


def compare_text(ref: Reference, text: str, *, encode: Encode, decode: Decode) -> PromptResult:
    """Compare a runtime that returns text (LiteRT-LM's engine) with reference ids.

    The text is compared, not re-encoded ids: the engine drops tokens that print nothing
    (``<unusedN>``, control tokens) and an incomplete UTF-8 tail, so ids made from its text
    can differ where the reply does not. Agreement counts the reference tokens whose text the
    reply reproduces in order (all of them when the texts are equal). The stop test applies
    when the reference ended by itself and the reply reproduces it: the reply must then end
    exactly there (the engine stopped at the bundle's stop token instead of running on)."""
    expected = list(ref.ids)
    expected_text = decode(expected)
    got = encode(text) if text else []
    if text == expected_text:
        matched = len(expected)
        first = None
    else:
        matched = 0
        while matched < len(expected) and text.startswith(decode(expected[: matched + 1])):
            matched += 1
        first = matched
    n = max(len(expected), len(got), 1)
    agreement = 1.0 if text == expected_text else matched / n
    if ref.stopped is None or not text.startswith(expected_text):
        stop_test = "n/a"
    else:
        stop_test = "pass" if text == expected_text else "fail"
    return PromptResult(
        prompt=ref.prompt,
        expected=tuple(expected),
        got=tuple(got),
        agreement=agreement,
        first_divergence=first,
        expected_stop=ref.stopped is not None,
        got_stop=stop_test == "pass",
        stop_test=stop_test,
        expected_text=expected_text,
        got_text=text,
    )


def forced_agreement(ref: Reference, predictions: Sequence[int]) -> float:
    """Share of the reference's tokens (and its stop token, when it stopped) that the
    teacher-forced predictions equal."""
    targets = [*ref.ids, *([ref.stopped] if ref.stopped is not None else [])]
    if not targets:
        return 1.0
    return sum(1 for t, p in zip(targets, predictions, strict=False) if t == p) / len(targets)


def _weighted(prompts: Sequence[PromptResult]) -> float:
    total = sum(max(len(p.expected), len(p.got), 1) for p in prompts)
    agree = sum(p.agreement * max(len(p.expected), len(p.got), 1) for p in prompts)
    return agree / total if total else 1.0


def interpreter_report(
    bundle: str,
    refs: Sequence[Reference],
    results: Sequence[Mapping[str, Any]],
    *,
    threshold: float,
    max_new_tokens: int,
    decode: Decode,
) -> RuntimeReport:
    """The interpreter's ``{"ids", "stopped", "forced"}`` per prompt against the references:
    gated on next-token agreement, the stop test against the reference."""
    prompts = []
    for ref, res in zip(refs, results, strict=True):
        got = [int(i) for i in res["ids"]]
        r = compare(ref, got, res.get("stopped") is not None, max_new_tokens=max_new_tokens)
        prompts.append(
            replace(
                r,
                expected_text=decode(list(ref.ids)),
                got_text=decode(got),
                seconds=res.get("total_s"),
                forced_agreement=forced_agreement(ref, res.get("forced") or []),
            )
        )
    weights = [len(ref.ids) + (ref.stopped is not None) or 1 for ref in refs]
    forced = sum(w * (p.forced_agreement or 0.0) for w, p in zip(weights, prompts, strict=True))
    gate = forced / sum(weights) if weights else 1.0
    stop_pass = sum(p.stop_test == "pass" for p in prompts)
    stop_fail = sum(p.stop_test == "fail" for p in prompts)
    return RuntimeReport(
        bundle,
        "interpreter",
        tuple(prompts),
        _weighted(prompts),
        gate,
        "next-token",
        stop_pass,
        stop_fail,
        gate >= threshold and stop_fail == 0,
    )


def engine_report(
    bundle: str,
    refs: Sequence[Reference],
    results: Sequence[Mapping[str, Any]],
    interpreter: RuntimeReport | None,
    *,
    threshold: float,
    encode: Encode,
    decode: Decode,
) -> RuntimeReport:
    """LiteRT-LM's ``{"text"}`` per prompt: reported against the reference, gated (and
    stop-tested) against the interpreter's reply to the same prompt (same model, so only the
    bundle's template, tokenizer and stop tokens can make them differ). Without an
    interpreter run it is gated against the reference."""
    prompts, versus = [], []
    for i, (ref, res) in enumerate(zip(refs, results, strict=True)):
        text = str(res.get("text", ""))
        prompts.append(
            replace(
                compare_text(ref, text, encode=encode, decode=decode), seconds=res.get("total_s")
            )
        )
        if interpreter is not None:
            mine = interpreter.prompts[i]
            own = Reference(ref.prompt, ref.prompt_ids, mine.got, 1 if mine.got_stop else None)
            versus.append(compare_text(own, text, encode=encode, decode=decode))
    gated = versus or prompts
    gate = _weighted(gated)
    stop_pass = sum(p.stop_test == "pass" for p in gated)
    stop_fail = sum(p.stop_test == "fail" for p in gated)
    return RuntimeReport(
        bundle,
        "litert_lm",
        tuple(prompts),
        _weighted(prompts),
        gate,
        "same as interpreter" if versus else "token agreement",
        stop_pass,
        stop_fail,
        gate >= threshold and stop_fail == 0,
    )


def build_report(
    quant: str,
    threshold: float,
    max_new_tokens: int,
    runtimes: Sequence[RuntimeReport],
) -> VerifyReport:
    notes = []
    if runtimes and all(r.stop_pass + r.stop_fail == 0 for r in runtimes):
        notes.append(
            "The stop test was not exercised: no reply ended within "
            f"{max_new_tokens} tokens (an untrained or base model rarely says <end_of_turn>)."
        )
    passed = bool(runtimes) and all(r.passed for r in runtimes)
    return VerifyReport(quant, threshold, max_new_tokens, tuple(runtimes), passed, tuple(notes))


def report_markdown(report: VerifyReport) -> str:
    """The report as the markdown saved beside the bundle (``verify.md``)."""
    lines = [
        "# Verification",
        "",
        f"Quantization `{report.quant}`, greedy, up to {report.max_new_tokens} new tokens, "
        "against the merged model (JAX, float32). Gates (threshold "
        f"{report.threshold:.0%}): the interpreter's next-token agreement (teacher-forced), "
        "LiteRT-LM's replies equal to the interpreter's, and every applicable stop test.",
        "",
        f"**{'PASSED' if report.passed else 'FAILED'}**",
        "",
        "| bundle | runtime | gated on | value | greedy token agreement | stop test | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.runtimes:
        tested = r.stop_pass + r.stop_fail
        stops = f"{r.stop_pass}/{tested}" if tested else "n/a"
        lines.append(
            f"| {r.bundle} | {r.runtime} | {r.gate_name} | {r.gate:.1%} | {r.agreement:.1%} "
            f"| {stops} | {'pass' if r.passed else 'FAIL'} |"
        )
    for note in report.notes:
        lines += ["", note]
    for r in report.runtimes:
        lines += ["", f"## {r.bundle} / {r.runtime}", ""]
        for p in r.prompts:
            div = (
                "identical"
                if p.first_divergence is None
                else f"first divergence at token {p.first_divergence}"
            )
            forced = (
                f"; next-token {p.forced_agreement:.0%}" if p.forced_agreement is not None else ""
            )
            lines.append(
                f"- {p.prompt!r}: greedy {p.agreement:.0%} ({div}{forced}; stop {p.stop_test})\n"
                f"  - expected: {json.dumps(p.expected_text)}\n"
                f"  - got:      {json.dumps(p.got_text)}"
            )
    return "\n".join(lines) + "\n"
