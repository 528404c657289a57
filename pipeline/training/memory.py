"""How much accelerator memory a LoRA training step needs, before loading anything.

:func:`estimate_memory` adds up what the jitted step of :mod:`pipeline.training.step` holds
at its peak, at the end of the forward pass (every saved activation is alive and the loss
head runs):

- frozen weights: ``parameter_count x weight bytes`` (the tied embedding counted once); a
  float32 base computed in bfloat16 also holds a bfloat16 copy of the embedding;
- LoRA: the adapter (float32), its gradient, AdamW's two float32 moments and, with
  gradient accumulation, the gradient sum: 4 or 5 x 4 bytes per LoRA parameter;
- activations saved for the backward pass, per decoder block and token, in the compute
  dtype: 6 x D, 3 x (N x Hd), 3 x (K x Hd), 3 x F (the inputs of the matmuls and norms, q
  and k before and after norm and RoPE, gate and up), r per LoRA target (``x @ A``) and
  the flash-attention log-sum-exp (float32 per query head). LoRA on ``down`` adds F (its
  input, for dA), on ``gate`` or ``up`` F + D (measured). With ``remat`` each block keeps
  its input (3 x D x 2 bytes in bfloat16, measured) and the backward pass rebuilds one
  block at a time. Without flash attention (XLA's attention on a CPU, or a GPU without
  cuDNN flash) the B x N x S x S probabilities are kept too;
- the loss head: the fused chunked cross-entropy holds ``B x chunk x V`` logits at a time,
  8 bytes per logit (the float32 logits and their float32 softmax; measured slope: +2.00
  GiB from chunk 256 to 512 at B4), plus h and dL/dh ``[B, S, D]``;
  ``loss_chunk_size = 0`` computes full logits with plain autodiff, also ~8 bytes per logit;
- an XLA workspace margin: 64 MiB + 2% of activations and loss head.

Calibration, current step (bf16 logits in the fused loss; bench/results/
train_throughput.md, H100, jax 0.11.2, 2026-11-22, 1B, S1024, r8 on q, v): B4 chunk 512
11.19 GiB measured / 11.39 estimated; B4 chunk 256 9.69 / 9.86; B8 chunk 512 20.49 / 20.84;
B4 chunk 512 remat 5.14 / 5.71 (+11%); rtx3060-12gb (B4, chunk 256, packing, accumulation 4) 9.69
/ 9.86 (tests/pipeline/test_memory.py pins these).

Earlier calibration, with the loss holding float32 logits (``logit_bytes=8`` reproduces it):
our step (``build_train_step``; random Gemma 3 weights, random tokens, bf16,
3 steps, ``peak_bytes_in_use`` with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``), measured on
one H100 80GB with jax 0.11.2 on 2026-11-22, S1024 and LoRA r8 on q, v unless noted:

=====================================================  ==========  ==========  ======
configuration                                           measured    estimate    error
=====================================================  ==========  ==========  ======
1B, B4, loss chunk 256                                  10.20 GiB   10.37 GiB   +1.6%
1B, B4, chunk 512                                       12.20 GiB   12.41 GiB   +1.7%
1B, B8, chunk 256                                       18.52 GiB   18.80 GiB   +1.6%
1B, B4, full logits (chunk 0)                           16.19 GiB   16.49 GiB   +1.9%
1B, B4, chunk 256, remat                                4.55 GiB    4.69 GiB    +3.2%
1B, B4, full logits, remat                              10.55 GiB   10.81 GiB   +2.5%
1B, B2 x S4096, chunk 256                               15.61 GiB   15.74 GiB   +0.9%
1B, B4, chunk 256, r8 on q, v, down                     11.60 GiB   11.79 GiB   +1.7%
1B, B4, chunk 256, r8 on q, v, gate, up                 11.85 GiB   12.05 GiB   +1.7%
1B, B4, chunk 256, r16 on all 7                         13.17 GiB   13.60 GiB   +3.3%
1B, B4, chunk 256, r16 on all 7, remat                  4.68 GiB    4.88 GiB    +4.1%
1B, B8, chunk 256, r16 on q, k, v, o                    18.14 GiB   18.86 GiB   +4.0%
1B, B8, chunk 512, r16 on all 7                         28.23 GiB   29.17 GiB   +3.3%
1B, B16, chunk 512, r16 on all 7 (preallocated 95%)     54.33 GiB   56.21 GiB   +3.5%
270M, B4, chunk 256                                     4.58 GiB    4.56 GiB    -0.6%
=====================================================  ==========  ==========  ======

The research prototype (research/gpu_custom_step.md; keras-hub forward, B4 x S1024, r8
q, v) kept only 4 bytes per logit in its fused loss (bf16 logits): with ``logit_bytes=4``
the estimate is 9.35 / 10.37 / 16.76 GiB against its 9.06 (chunk 256) / 10.06 (chunk 512)
/ 16.17 (B8) GiB, +3.2 to +3.7%; its full-logits step 16.04 GiB against 16.49 (+2.8%).
keras ``Model.fit`` (gpu_anchors.md) keeps ~4 bytes per logit: 12.04 GiB against 12.41
with ``logit_bytes=4`` (+3.1%; +37% with the default 8); its RematScope run, 6.12 GiB
against 6.73 (+10%: keras rematerialises differently).

The estimate errs a few percent high; :meth:`MemoryEstimate.fits` also leaves
:data:`CONTEXT_RESERVE` for the CUDA context and libraries, which ``peak_bytes_in_use`` does
not count, and assumes XLA may use nearly the whole card (JAX's default preallocates 75%).
With ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` the B16 all-targets row above failed to
allocate its single 52.3 GiB temporary buffer on the 80 GB card even with a 0.97 memory
fraction; preallocating 95% ran it.

Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.models.config import ARCH_1B, ARCH_270M, ARCH_TINY, GemmaArch

if TYPE_CHECKING:
    from pipeline.profiles.schema import LoraConfig, Profile, TrainConfig

GiB = 1024**3
MiB = 1024**2
CONTEXT_RESERVE = 512 * MiB
"""Card memory that the CUDA context, cuBLAS and cuDNN take outside XLA's accounting."""
WORKSPACE_FIXED = 64 * MiB
WORKSPACE_SHARE = 0.02
FUSED_LOGIT_BYTES = 6.0
"""Bytes the fused loss holds per logit of a chunk with bfloat16 compute: bf16 logits plus
float32 softmax temporaries (measured slope after the loss switched to bf16 logits: 1.5 GiB
from chunk 256 to 512 at B4). With float32 compute: :data:`FUSED_LOGIT_BYTES_F32`."""
FUSED_LOGIT_BYTES_F32 = 8.0
FULL_LOGIT_BYTES = 8.0
DOTS_KEEP = 0.634
"""Share of the no-remat activations that ``remat_policy = "dots"`` keeps (measured)."""
ADVICE_CHUNK = 256

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def _lora_shapes(arch: GemmaArch) -> dict[str, tuple[int, int]]:
    """(in, out) of each LoRA target's flat matrix (docs/training-api.md)."""
    d, f, q, kv = arch.hidden_dim, arch.intermediate_dim, arch.q_dim, arch.kv_dim
    return {
        "q": (d, q),
        "k": (d, kv),
        "v": (d, kv),
        "o": (q, d),
        "gate": (d, f),
        "up": (d, f),
        "down": (f, d),
    }


def lora_parameter_count(arch: GemmaArch, lora: LoraConfig) -> int:
    """LoRA parameters of the whole model: ``(in + out) x rank`` per target and block."""
    shapes = _lora_shapes(arch)
    per_block = sum((shapes[t][0] + shapes[t][1]) * lora.rank for t in lora.targets)
    return per_block * arch.num_layers


@dataclass(frozen=True)
class _Inputs:
    arch: GemmaArch
    lora: LoraConfig
    train: TrainConfig
    weight_dtype: str
    flash_attention: bool
    logit_bytes: float | None


def _fmt(n: float) -> str:
    if n >= 0.1 * GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB" if n >= 10 * MiB else f"{n / MiB:.1f} MiB"


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """The parts of a training step's peak accelerator memory, in bytes."""

    frozen_weights: int
    lora_params: int
    """The LoRA adapter itself (float32)."""
    optimizer: int
    """AdamW's two float32 moments, the gradient and the accumulated gradient."""
    activations: int
    """Saved for the backward pass (with remat: block inputs and one rebuilt block)."""
    loss_head: int
    workspace: int
    """XLA workspace margin."""
    description: str = ""
    """What was estimated, e.g. "gemma3_1b, bfloat16, batch 4 x 1024, LoRA r8 on q, v"."""
    notes: tuple[str, ...] = ()
    inputs: _Inputs | None = field(default=None, repr=False, compare=False)
    """What :func:`estimate_memory` was given, so that :meth:`advice` can search for a fix."""

    @property
    def total(self) -> int:
        return (
            self.frozen_weights
            + self.lora_params
            + self.optimizer
            + self.activations
            + self.loss_head
            + self.workspace
        )

    def fits(self, total_vram_bytes: int) -> bool:
        """Whether the step fits a card of ``total_vram_bytes`` (less :data:`CONTEXT_RESERVE`)."""
        return self.total <= usable_bytes(total_vram_bytes)

    def advice(self, total_vram_bytes: int) -> str | None:
        """None when it fits; else what to change in the profile so that it does: the first
        change that fits among a smaller loss chunk, a smaller batch with more accumulation
        steps, remat, and a shorter sequence (an estimate built by hand, without
        ``inputs``, gets a generic sentence)."""
        if self.fits(total_vram_bytes):
            return None
        return _advice_for(self, total_vram_bytes)

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI and the TUI."""
        rows = [
            ("frozen weights", self.frozen_weights),
            ("LoRA weights (float32)", self.lora_params),
            ("AdamW state + gradients", self.optimizer),
            ("activations", self.activations),
            ("loss head", self.loss_head),
            ("XLA workspace margin", self.workspace),
        ]
        head = f"Memory estimate: {_fmt(self.total)}"
        out = [head + (f" ({self.description})" if self.description else "")]
        width = max(len(name) for name, _ in rows)
        out += [f"  {name:<{width}}  {_fmt(value):>10}" for name, value in rows]
        out += [f"  {note}" for note in self.notes]
        return out


def usable_bytes(total_vram_bytes: int) -> int:
    """What XLA can use of a card: its total less :data:`CONTEXT_RESERVE`."""
    return max(0, total_vram_bytes - CONTEXT_RESERVE)


def estimate_memory(
    arch: GemmaArch,
    lora: LoraConfig,
    train: TrainConfig,
    *,
    weight_dtype: str = "bfloat16",
    flash_attention: bool = True,
    logit_bytes: float | None = None,
) -> MemoryEstimate:
    """Estimate the peak accelerator memory of one training step (see the module docstring
    for the model and how close it is to measurements).

    ``weight_dtype`` is the frozen base's dtype (profile ``model.dtype``); the compute dtype
    is ``train.precision``. ``flash_attention`` False adds XLA attention's S x S
    probabilities. ``logit_bytes`` overrides the bytes the loss head keeps per logit
    (default 4 for the fused chunked loss, 8 for full logits).
    """
    wbytes = _DTYPE_BYTES[weight_dtype]
    abytes = _DTYPE_BYTES[train.precision]
    b, s = train.batch_size, train.sequence_length
    tokens = b * s
    d, f = arch.hidden_dim, arch.intermediate_dim
    notes: list[str] = []

    frozen = arch.parameter_count() * wbytes
    if wbytes > abytes:  # the loss head casts the tied embedding to the compute dtype
        frozen += arch.vocabulary_size * d * abytes
    n_lora = lora_parameter_count(arch, lora)
    lora_bytes = n_lora * 4
    optimizer = n_lora * 4 * (4 if train.gradient_accumulation_steps == 1 else 5) - lora_bytes

    values = 6 * d + 3 * arch.q_dim + 3 * arch.kv_dim + 3 * f + lora.rank * len(lora.targets)
    if "down" in lora.targets:
        values += f  # its input, for dA
    if "gate" in lora.targets or "up" in lora.targets:
        values += f + d
    per_token = values * abytes + 4 * arch.num_query_heads
    block = tokens * per_token
    if not flash_attention:
        # XLA attention keeps the dense [S, S] probabilities (compute dtype) for the backward
        # pass, in sliding-window layers too.
        block += b * arch.num_query_heads * s * s * abytes
    # remat: the block input and, in bfloat16, a float32 copy of it (measured: 3 x D x 2 B)
    block_inputs = arch.num_layers * tokens * d * (abytes + (4 if abytes < 4 else 0))
    hidden = 2 * tokens * d * abytes  # the final hidden states and dL/dh

    chunk = min(train.loss_chunk_size, s) if train.loss_chunk_size else s
    per_logit = logit_bytes
    if per_logit is None:
        if not train.loss_chunk_size:
            per_logit = FULL_LOGIT_BYTES
        elif train.precision == "bfloat16":
            per_logit = FUSED_LOGIT_BYTES
        else:
            per_logit = FUSED_LOGIT_BYTES_F32
    head = int(b * chunk * arch.vocabulary_size * per_logit) + hidden

    if train.remat and train.remat_policy == "dots":
        # Matmul outputs kept, elementwise work recomputed: measured 2.29 GiB less than no
        # remat at 1B, B4 x 1024, r8 on q, v (8.90 against 11.19 GiB at chunk 512, 7.40
        # against 9.69 at chunk 256), i.e. this share of the activations is kept.
        activations = int(arch.num_layers * block * DOTS_KEEP)
        loss_head = head
    elif train.remat:
        # The head runs before the backward pass rebuilds the blocks one at a time, so the
        # peak holds the block inputs and the larger of the two.
        if head >= block:
            activations, loss_head = block_inputs, head
        else:
            activations, loss_head = block_inputs + block, hidden
    else:
        activations = arch.num_layers * block
        loss_head = head
    workspace = WORKSPACE_FIXED + int(WORKSPACE_SHARE * (activations + loss_head))

    if train.loss_chunk_size == 0:
        notes.append(
            f"loss_chunk_size = 0 holds full logits ({_fmt(head - hidden)}); "
            f"{ADVICE_CHUNK} would need {_fmt(b * min(ADVICE_CHUNK, s) * arch.vocabulary_size * 4)}"
        )
    targets = ", ".join(lora.targets)
    mode = (" remat" + (" (dots)" if train.remat_policy == "dots" else "")) if train.remat else ""
    chunk_text = f"loss chunk {train.loss_chunk_size}" if train.loss_chunk_size else "full logits"
    return MemoryEstimate(
        frozen_weights=frozen,
        lora_params=lora_bytes,
        optimizer=optimizer,
        activations=activations,
        loss_head=loss_head,
        workspace=workspace,
        description=(
            f"{arch.name}, {weight_dtype} weights, {train.precision} compute, batch {b} x {s}"
            f"{mode}, {chunk_text}, LoRA r{lora.rank} on {targets}"
        ),
        notes=tuple(notes),
        inputs=_Inputs(arch, lora, train, weight_dtype, flash_attention, logit_bytes),
    )


def estimate_for_profile(
    profile: Profile, arch: GemmaArch, *, flash_attention: bool = True
) -> MemoryEstimate:
    """:func:`estimate_memory` with the profile's LoRA, train and model.dtype."""
    return estimate_memory(
        arch,
        profile.lora,
        profile.train,
        weight_dtype=profile.model.dtype,
        flash_attention=flash_attention,
    )


def estimate_for_card(
    profile: Profile, card: tuple[int, int] | None, *, source: str | None = None
) -> tuple[list[str], str | None, bool | None]:
    """What to show before a run: the estimate's lines for ``profile`` (its model, or
    ``source``), a line on the card when there is one (``card``: NVML's used and total
    bytes), the advice when it does not fit, and whether it fits (None without a card or a
    known architecture). Without a card XLA's attention keeps the S x S probabilities."""
    source = source or profile.model.source
    arch = guess_arch(source)
    if arch is None:
        return [f"Memory estimate: unknown until {source} is loaded"], None, None
    estimate = estimate_for_profile(profile, arch, flash_attention=card is not None)
    lines = estimate.lines()
    if card is None:
        return lines, None, None
    used, total = card
    lines.append(f"  GPU: {total / GiB:.1f} GiB, {used / GiB:.1f} GiB in use by all processes")
    return lines, estimate.advice(total), estimate.fits(total)


def guess_arch(source: str) -> GemmaArch | None:
    """The architecture a model source most likely has, without reading it: "embedded" and
    names with "270m" are 270M, names with "1b" are 1B, "tiny" is tiny; else None."""
    text = source.lower()
    if text == "tiny":
        return ARCH_TINY
    if text == "embedded" or "270m" in text:
        return ARCH_270M
    if "1b" in text.replace("-", "").replace("_", ""):
        return ARCH_1B
    return None


# --------------------------------------------------------------------------- advice


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _candidates(train: TrainConfig) -> list[tuple[dict[str, object], str]]:
    """Profile changes in order of what they cost (speed first, then memory only, then the
    data itself), each with its description."""
    out: list[tuple[dict[str, object], str]] = []
    s = train.sequence_length
    base: dict[str, object] = {}
    base_text: list[str] = []
    if train.loss_chunk_size == 0 or train.loss_chunk_size > ADVICE_CHUNK:
        chunk = min(ADVICE_CHUNK, s)
        base = {"loss_chunk_size": chunk}
        base_text = [f"train.loss_chunk_size = {chunk}"]

    def batches(extra: dict[str, object], text: list[str]) -> None:
        b = train.batch_size
        if extra or base:
            out.append(({**base, **extra}, _join(base_text + text)))
        while b > 1:
            b = b // 2
            acc = train.gradient_accumulation_steps * math.ceil(train.batch_size / b)
            change = {**base, **extra, "batch_size": b, "gradient_accumulation_steps": acc}
            per_step = (
                f"the same {b * acc} sequences per step"
                if b * acc == train.effective_batch_size
                else f"{b * acc} instead of {train.effective_batch_size} sequences per step"
            )
            words = [
                f"train.batch_size = {b} with train.gradient_accumulation_steps = {acc} "
                f"({per_step})"
            ]
            out.append((change, _join(base_text + text + words)))

    batches({}, [])
    if not train.remat:
        batches(
            {"remat": True, "remat_policy": "dots"},
            ['train.remat = true with train.remat_policy = "dots" (about 1.05x the step time)'],
        )
        batches(
            {"remat": True, "remat_policy": "full"},
            ["train.remat = true (about 1.3x the step time)"],
        )
    length = s
    while length > 256:
        length //= 2
        chunk = min(ADVICE_CHUNK, length)
        change = {
            "remat": True,
            "batch_size": 1,
            "gradient_accumulation_steps": train.gradient_accumulation_steps * train.batch_size,
            "sequence_length": length,
            "loss_chunk_size": chunk,
        }
        out.append(
            (
                change,
                f"train.sequence_length = {length} (longer examples are truncated), "
                f"train.batch_size = 1 with train.gradient_accumulation_steps = "
                f"{change['gradient_accumulation_steps']}, train.remat = true and "
                f"train.loss_chunk_size = {chunk}",
            )
        )
    return out


def _advice_for(est: MemoryEstimate, total_vram_bytes: int) -> str:
    usable = usable_bytes(total_vram_bytes)
    head = (
        f"The estimated peak of {_fmt(est.total)} does not fit this GPU "
        f"({_fmt(total_vram_bytes)}, about {_fmt(usable)} usable)."
    )
    inputs = est.inputs
    if inputs is None:
        return head + (
            " Lower train.batch_size (raise train.gradient_accumulation_steps to keep the "
            "effective batch), set train.remat = true, lower train.loss_chunk_size or "
            "train.sequence_length."
        )
    if est.frozen_weights + est.lora_params + est.optimizer > usable:
        return head + (
            f" The frozen weights alone need {_fmt(est.frozen_weights)}: use a smaller model "
            "or a GPU with more memory."
        )
    last: MemoryEstimate | None = None
    for change, text in _candidates(inputs.train):
        try:
            candidate = dataclasses.replace(inputs.train, **change)  # type: ignore[arg-type]
        except Exception:  # an invalid combination: skip it
            continue
        last = estimate_memory(
            inputs.arch,
            inputs.lora,
            candidate,
            weight_dtype=inputs.weight_dtype,
            flash_attention=inputs.flash_attention,
            logit_bytes=inputs.logit_bytes,
        )
        if last.fits(total_vram_bytes):
            return f"{head} To fit, set {text}: about {_fmt(last.total)}."
    smallest = f" (the smallest tried needs {_fmt(last.total)})" if last else ""
    return head + (
        f" No profile change tried fits{smallest}: use fewer LoRA targets, a smaller model "
        "or a GPU with more memory."
    )
