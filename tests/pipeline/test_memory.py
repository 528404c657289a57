"""The memory estimate against the H100 measurements, and its advice."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.models.config import ARCH_1B, ARCH_270M, ARCH_TINY, GemmaArch
from pipeline.models.lora import AdapterMeta, trainable_parameter_count
from pipeline.profiles import LoraConfig, TrainConfig, load_profile
from pipeline.training.memory import (
    GiB,
    MemoryEstimate,
    estimate_for_profile,
    estimate_memory,
    guess_arch,
    lora_parameter_count,
)

QV8 = LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))


def _train(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"max_steps": 100, "batch_size": 4, "sequence_length": 1024}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


QV8_DOWN = LoraConfig(rank=8, alpha=16.0, targets=("q", "v", "down"))
QV8_GATE_UP = LoraConfig(rank=8, alpha=16.0, targets=("q", "v", "gate", "up"))
ALL16 = LoraConfig(rank=16, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
QKVO16 = LoraConfig(rank=16, alpha=16.0, targets=("q", "k", "v", "o"))

# Our step's peak_bytes_in_use on one H100 after the fused loss switched to bf16 logits
# (bench/results/train_throughput.md, 2026-11-22).
MEASURED_NOW = [
    ("1B B4 chunk 512", ARCH_1B, QV8, _train(loss_chunk_size=512), 11.187),
    ("1B B4 chunk 256", ARCH_1B, QV8, _train(loss_chunk_size=256), 9.687),
    ("1B B8 chunk 512", ARCH_1B, QV8, _train(batch_size=8, loss_chunk_size=512), 20.485),
    (
        "rtx3060-12gb",
        ARCH_1B,
        QV8,
        _train(loss_chunk_size=256, packing=True, gradient_accumulation_steps=4),
        9.689,
    ),
]


@pytest.mark.parametrize(
    ("name", "arch", "lora", "train", "measured"), MEASURED_NOW, ids=[m[0] for m in MEASURED_NOW]
)
def test_estimate_is_close_to_our_current_step(
    name: str, arch: GemmaArch, lora: LoraConfig, train: TrainConfig, measured: float
) -> None:
    est = estimate_memory(arch, lora, train, weight_dtype="bfloat16")
    ratio = est.total / GiB / measured
    assert 0.99 <= ratio <= 1.05, f"{name}: estimate {est.total / GiB:.2f} GiB vs {measured}"


@pytest.mark.parametrize(("chunk", "measured"), [(512, 8.905), (256, 7.405)])
def test_estimate_with_remat_dots(chunk: int, measured: float) -> None:
    """remat_policy = "dots" (bench cases a_dots and a_dots_c256)."""
    train = _train(loss_chunk_size=chunk, remat=True, remat_policy="dots")
    est = estimate_memory(ARCH_1B, QV8, train, weight_dtype="bfloat16")
    assert 0.99 <= est.total / GiB / measured <= 1.05, est.total / GiB


def test_estimate_with_remat_errs_high_but_not_far() -> None:
    """With remat the estimate is conservative: 5.71 GiB against 5.14 measured (+11%)."""
    est = estimate_memory(
        ARCH_1B, QV8, _train(loss_chunk_size=512, remat=True), weight_dtype="bfloat16"
    )
    assert 1.0 <= est.total / GiB / 5.144 <= 1.15


# The same step before that switch, holding float32 logits (8 bytes per logit; jax 0.11.2,
# 2026-11-22; see memory.py's docstring).
MEASURED = [
    ("1B B4 chunk 256", ARCH_1B, QV8, _train(loss_chunk_size=256), 10.202),
    ("1B B4 chunk 512", ARCH_1B, QV8, _train(loss_chunk_size=512), 12.202),
    ("1B B8 chunk 256", ARCH_1B, QV8, _train(batch_size=8, loss_chunk_size=256), 18.516),
    ("1B B4 full logits", ARCH_1B, QV8, _train(loss_chunk_size=0), 16.185),
    ("1B B4 chunk 256 remat", ARCH_1B, QV8, _train(loss_chunk_size=256, remat=True), 4.547),
    ("1B B4 full logits remat", ARCH_1B, QV8, _train(loss_chunk_size=0, remat=True), 10.553),
    (
        "1B B2 S4096",
        ARCH_1B,
        QV8,
        _train(batch_size=2, sequence_length=4096, loss_chunk_size=256),
        15.61,
    ),
    ("1B B4 q,v,down", ARCH_1B, QV8_DOWN, _train(loss_chunk_size=256), 11.597),
    ("1B B4 q,v,gate,up", ARCH_1B, QV8_GATE_UP, _train(loss_chunk_size=256), 11.849),
    ("1B B4 r16 all", ARCH_1B, ALL16, _train(loss_chunk_size=256), 13.166),
    ("1B B4 r16 all remat", ARCH_1B, ALL16, _train(loss_chunk_size=256, remat=True), 4.685),
    ("1B B8 r16 q,k,v,o", ARCH_1B, QKVO16, _train(batch_size=8, loss_chunk_size=256), 18.135),
    ("1B B8 r16 all chunk 512", ARCH_1B, ALL16, _train(batch_size=8, loss_chunk_size=512), 28.227),
    ("1B B16 r16 all chunk 512", ARCH_1B, ALL16, _train(batch_size=16, loss_chunk_size=512), 54.33),
    ("270M B4 chunk 256", ARCH_270M, QV8, _train(loss_chunk_size=256), 4.585),
]


@pytest.mark.parametrize(
    ("name", "arch", "lora", "train", "measured"), MEASURED, ids=[m[0] for m in MEASURED]
)
def test_estimate_is_close_to_our_step(
    name: str, arch: GemmaArch, lora: LoraConfig, train: TrainConfig, measured: float
) -> None:
    logit_bytes = 8.0 if train.loss_chunk_size else None
    est = estimate_memory(arch, lora, train, weight_dtype="bfloat16", logit_bytes=logit_bytes)
    ratio = est.total / GiB / measured
    assert 0.99 <= ratio <= 1.05, f"{name}: estimate {est.total / GiB:.2f} GiB vs {measured}"


# research/gpu_custom_step.md and gpu_anchors.md (keras-hub forward), 4 bytes per logit there.
RESEARCH = [
    ("prototype fused 256", _train(loss_chunk_size=256), 4.0, 9.06),
    ("prototype fused 512", _train(loss_chunk_size=512), 4.0, 10.06),
    ("prototype fused 256 B8", _train(batch_size=8, loss_chunk_size=256), 4.0, 16.17),
    ("prototype full logits", _train(loss_chunk_size=0), None, 16.04),
    ("keras Model.fit", _train(loss_chunk_size=0), 4.0, 12.04),
]


@pytest.mark.parametrize(
    ("name", "train", "logit_bytes", "measured"), RESEARCH, ids=[r[0] for r in RESEARCH]
)
def test_estimate_matches_the_research_measurements(
    name: str, train: TrainConfig, logit_bytes: float | None, measured: float
) -> None:
    est = estimate_memory(ARCH_1B, QV8, train, logit_bytes=logit_bytes)
    assert 1.0 <= est.total / GiB / measured <= 1.05, f"{name}: {est.total / GiB:.2f} GiB"


def test_parts() -> None:
    est = estimate_memory(ARCH_1B, QV8, _train(loss_chunk_size=256))
    assert est.frozen_weights == ARCH_1B.parameter_count() * 2
    n = lora_parameter_count(ARCH_1B, QV8)
    assert n == trainable_parameter_count(AdapterMeta(8, 16.0, ("q", "v"), ARCH_1B))
    assert est.lora_params == 4 * n and est.optimizer == 3 * 4 * n
    assert est.loss_head == 4 * 256 * 262144 * 6 + 2 * 4 * 1024 * 1152 * 2
    assert est.total == sum(
        getattr(est, f) for f in ("frozen_weights", "lora_params", "optimizer", "activations",
                                  "loss_head", "workspace")
    )  # fmt: skip
    # accumulation keeps a gradient sum; float32 weights double the base
    acc = estimate_memory(ARCH_1B, QV8, _train(gradient_accumulation_steps=2))
    assert acc.optimizer == 4 * 4 * n
    f32 = estimate_memory(ARCH_1B, QV8, _train(precision="float32"), weight_dtype="float32")
    assert f32.frozen_weights == ARCH_1B.parameter_count() * 4
    assert f32.activations == pytest.approx(2 * est.activations, rel=1e-3)
    mixed = estimate_memory(ARCH_1B, QV8, _train(), weight_dtype="float32")
    assert mixed.frozen_weights == ARCH_1B.parameter_count() * 4 + 262144 * 1152 * 2
    # remat keeps block inputs only; no flash attention keeps S x S probabilities
    remat = estimate_memory(ARCH_1B, QV8, _train(remat=True))
    assert remat.activations == 26 * 4 * 1024 * 1152 * (2 + 4)  # block inputs, bf16 + f32
    xla = estimate_memory(ARCH_1B, QV8, _train(), flash_attention=False)
    assert xla.activations - est.activations == 26 * 4 * 4 * 1024 * 1024 * 2


def test_lines_read_well() -> None:
    est = estimate_memory(ARCH_1B, QV8, _train(loss_chunk_size=0))
    lines = est.lines()
    assert lines[0].startswith(f"Memory estimate: {est.total / GiB:.2f} GiB (gemma3_1b")
    assert "full logits" in lines[0] and "LoRA r8 on q, v" in lines[0]
    assert any(line.strip().startswith("frozen weights") and "1.86 GiB" in line for line in lines)
    assert any("256 would need 1.00 GiB" in line for line in lines)


def test_fits_and_advice() -> None:
    ok = estimate_memory(ARCH_1B, QV8, _train(loss_chunk_size=256))
    assert ok.fits(12 * GiB) and ok.advice(12 * GiB) is None
    assert not ok.fits(9 * GiB)

    full = estimate_memory(ARCH_1B, QV8, _train(loss_chunk_size=0))
    advice = full.advice(12 * GiB)
    assert advice is not None
    assert "does not fit this GPU (12.00 GiB, about 11.50 GiB usable)" in advice
    assert advice.endswith("To fit, set train.loss_chunk_size = 256: about 9.86 GiB.")

    big = estimate_memory(ARCH_1B, QV8, _train(batch_size=16, loss_chunk_size=512))
    advice = big.advice(12 * GiB) or ""
    assert (
        "train.loss_chunk_size = 256 and train.batch_size = 4 with "
        "train.gradient_accumulation_steps = 4 (the same 16 sequences per step)"
    ) in advice
    advice = big.advice(4 * GiB) or ""
    assert "train.batch_size = 1" in advice and 'train.remat_policy = "dots"' in advice
    advice = big.advice(3.5 * GiB) or ""
    assert "train.remat = true" in advice and "train.batch_size = 1" in advice
    advice = big.advice(2 * GiB) or ""
    assert "The frozen weights alone need 1.86 GiB" in advice

    # a long sequence on a small card: shorten it, as a last resort
    long = estimate_memory(ARCH_270M, QV8, _train(sequence_length=32768, loss_chunk_size=512))
    advice = long.advice(2 * GiB) or ""
    assert "train.sequence_length = " in advice and "truncated" in advice

    # the advice is checked: the profile it names fits
    fixed = dataclasses.replace(
        _train(batch_size=16, loss_chunk_size=512),
        loss_chunk_size=256, batch_size=4, gradient_accumulation_steps=4,
    )  # fmt: skip
    assert estimate_memory(ARCH_1B, QV8, fixed).fits(12 * GiB)

    by_hand = MemoryEstimate(
        frozen_weights=GiB, lora_params=0, optimizer=0, activations=GiB, loss_head=0,
        workspace=0,
    )  # fmt: skip
    assert "Lower train.batch_size" in (by_hand.advice(GiB) or "")


def test_profiles_and_architecture_guess() -> None:
    assert guess_arch("embedded") == ARCH_270M
    assert guess_arch("tiny") == ARCH_TINY
    assert guess_arch("hf://google/gemma-3-1b-it") == ARCH_1B
    assert guess_arch("gemma3_instruct_1b") == ARCH_1B
    assert guess_arch("/models/gemma-3-270m-it-Q4_K_M.gguf") == ARCH_270M
    assert guess_arch("/models/mystery.gguf") is None
    smoke = estimate_for_profile(load_profile("cpu-smoke"), ARCH_270M)
    assert smoke.total < 2 * GiB
    for name, gib in (("rtx3060-12gb", 12), ("rtx4090-24gb", 24), ("h100-80gb", 80)):
        profile = load_profile(name)
        arch = guess_arch(profile.model.source) or ARCH_1B
        est = estimate_for_profile(profile, arch)
        assert est.fits(gib * GiB), f"{name}: {est.lines()}"
