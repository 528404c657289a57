"""Proof that a bundle answers like the model it came from.

On a fixed set of prompts (Gemma 3 turn template, the same one the trainer used), the merged
model's greedy continuation in JAX (float32) is the reference. Each bundle is run greedily on
the CPU two ways, in the export worker:

* ``interpreter``: the ``.task``'s own TFLite model, tokenizer and METADATA stop tokens in an
  ``ai_edge_litert`` signature loop, giving token ids;
* ``litert_lm``: LiteRT-LM's engine on the bundle file itself (its own template and stop
  handling), giving text; the text is encoded with the model's tokenizer to compare ids.

Per prompt: token agreement (matching positions over the longer of the two sequences), the
first position where they differ, and the stop test. The stop test applies where the
reference ended with a stop token and the bundle matched it up to there: the bundle must end
at that same position by itself. The export passes when every runtime's agreement reaches the
threshold and no applicable stop test fails.
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
"""Default thresholds of mean token agreement per quantization (``--min-agreement``
overrides). Float32 and float16 should agree exactly; 8-bit flips a near-tie now and then;
4-bit on a small model drifts more."""


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
    first_divergence: int | None
    """First position where the two differ (None: identical, stop included)."""
    expected_stop: bool
    got_stop: bool
    stop_test: str
    """``pass``, ``fail`` or ``n/a`` (the reference did not stop, or they diverged first)."""
    expected_text: str = ""
    got_text: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class RuntimeReport:
    bundle: str
    """``task``, ``litertlm`` or ``tflite``."""
    runtime: str
    """``interpreter`` or ``litert_lm``."""
    prompts: tuple[PromptResult, ...]
    agreement: float
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
        """One line: agreement per runtime and the verdict."""
        parts = [
            f"{r.bundle}/{r.runtime} {r.agreement:.1%}"
            + (
                f", stop {r.stop_pass}/{r.stop_pass + r.stop_fail}"
                if r.stop_pass + r.stop_fail
                else ""
            )
            for r in self.runtimes
        ]
        verdict = "passed" if self.passed else "FAILED"
        return f"verify {verdict} (threshold {self.threshold:.0%}): " + "; ".join(parts)


def compare(
    ref: Reference,
    got: Sequence[int],
    got_stopped: bool,
    *,
    max_new_tokens: int,
) -> PromptResult:
    """Agreement, first divergence and the stop test of one prompt."""
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


def compare_text(
    ref: Reference,
    text: str,
    *,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
) -> PromptResult:
    """Compare a runtime that returns text (LiteRT-LM's engine) with the reference ids.

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
    reproduces = text.startswith(expected_text)
    if ref.stopped is None or not reproduces:
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


def runtime_report(
    bundle: str,
    runtime: str,
    refs: Sequence[Reference],
    results: Sequence[Mapping[str, Any]],
    *,
    threshold: float,
    max_new_tokens: int,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
) -> RuntimeReport:
    """Compare one runtime's worker results (``{"ids", "stopped"}`` from the interpreter,
    ``{"text"}`` from LiteRT-LM) with the references."""
    prompts = []
    for ref, res in zip(refs, results, strict=True):
        if "ids" in res:
            got = [int(i) for i in res["ids"]]
            r = compare(ref, got, res.get("stopped") is not None, max_new_tokens=max_new_tokens)
            r = replace(r, expected_text=decode(list(ref.ids)), got_text=decode(got))
        else:
            r = compare_text(ref, str(res.get("text", "")), encode=encode, decode=decode)
        prompts.append(replace(r, seconds=res.get("total_s")))
    total = sum(max(len(p.expected), len(p.got), 1) for p in prompts)
    agree = sum(p.agreement * max(len(p.expected), len(p.got), 1) for p in prompts)
    agreement = agree / total if total else 1.0
    stop_pass = sum(p.stop_test == "pass" for p in prompts)
    stop_fail = sum(p.stop_test == "fail" for p in prompts)
    passed = agreement >= threshold and stop_fail == 0
    return RuntimeReport(bundle, runtime, tuple(prompts), agreement, stop_pass, stop_fail, passed)


def build_report(
    quant: str,
    threshold: float,
    max_new_tokens: int,
    runtimes: Sequence[RuntimeReport],
) -> VerifyReport:
    notes = []
    if runtimes and all(r.stop_pass + r.stop_fail == 0 for r in runtimes):
        notes.append(
            "The stop test was not exercised: the reference reply never ended within "
            f"{max_new_tokens} tokens (an untrained or base model rarely says <end_of_turn>)."
        )
    passed = bool(runtimes) and all(r.passed for r in runtimes)
    return VerifyReport(quant, threshold, max_new_tokens, tuple(runtimes), passed, tuple(notes))


def report_markdown(report: VerifyReport) -> str:
    """The report as the markdown saved beside the bundle (``verify.md``)."""
    lines = [
        "# Verification",
        "",
        f"Quantization `{report.quant}`, greedy, up to {report.max_new_tokens} new tokens; "
        f"threshold {report.threshold:.0%} mean token agreement with the merged model "
        "(JAX, float32).",
        "",
        f"**{'PASSED' if report.passed else 'FAILED'}**",
        "",
        "| bundle | runtime | agreement | stop test | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in report.runtimes:
        stops = f"{r.stop_pass}/{r.stop_pass + r.stop_fail}" if r.stop_pass + r.stop_fail else "n/a"
        lines.append(
            f"| {r.bundle} | {r.runtime} | {r.agreement:.1%} | {stops} | "
            f"{'pass' if r.passed else 'FAIL'} |"
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
            lines.append(
                f"- {p.prompt!r}: {p.agreement:.0%} ({div}; stop {p.stop_test})\n"
                f"  - expected: {json.dumps(p.expected_text)}\n"
                f"  - got:      {json.dumps(p.got_text)}"
            )
    return "\n".join(lines) + "\n"
