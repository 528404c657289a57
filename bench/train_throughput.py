"""LoRA training throughput on one GPU: our JAX step against keras ``Model.fit`` and HF + PEFT.

Every case runs in its own subprocess, so each gets fresh JAX or torch memory statistics. JAX
cases run with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so the peak is what the step needs.
The model is the Gemma 3 1B architecture with random weights. Each step trains on batch 4 x
sequence 1024, with LoRA rank 8 and alpha 16 on q and v, in bf16:

  a           our trainer's step (pipeline.training.step), random tokens
  b           plain ``keras.Model.fit`` on keras-hub Gemma3CausalLM (backbone.enable_lora, then
              alpha 16 on every query and value layer, preprocessor=None)
  c_eager     transformers + PEFT Gemma3ForCausalLM (sdpa), eager mode
  c_compile   the same under torch.compile (the loss function, default mode)
  d           our step with the rtx3060-12gb profile's train settings (batch, sequence,
              accumulation, packing, loss chunk), with JAX capped at 12 GiB
              (XLA_PYTHON_CLIENT_MEM_FRACTION from the card's total): whether it fits, and the peak
  gN          our step with the trainer's placement (pipeline.training.distribute: keras
              DataParallel) over N GPUs, the global batch --batch x --seq split across them
              (g1, g2, ...): one GPU's throughput against N's. Any gN case also writes
              bench/results/multi_gpu.md (tokens/s, scaling, per-device peak) instead of
              rewriting train_throughput.md
  e_packed    our step on alpaca's real length distribution (a save_examples file in bench/data),
              with packing on, giving trained tokens/s
  e_unpacked  the same with packing off; the md reports the ratio packed / unpacked

``c`` and ``e`` select both of their cases, and ``all`` selects every case (the default). ``all``
runs c_compile last (about two minutes of cold compile), so a tight budget drops it first.

Measurements:
- tokens/s: N steps dispatched back to back, then one sync (pipelined).
- step ms: the same pipelined time per step. A blocked median (one sync per step) is also in
  the JSON.
- peak GiB: ``peak_bytes_in_use`` for JAX, ``max_memory_allocated`` for torch.
- compile s: wall time of the first step (trace + compile + one step).
- MFU = tokens/s x F(S) / 989.4 TFLOP/s, with F = 4 N_mm + 3 A(S) per token
  (research/gpu_anchors.md): 4.128 GFLOP/token for the 1B model at S = 1024.

Budgets: ``--budget-s`` is the total wall time. Each case also has its own budget
(``--case-budget a=150,c_compile=240``). A case is cut at the smaller of the two, and it is
skipped when too little time is left.

Robustness:
- Each case's record goes into ``<out>/train_throughput.json`` and ``cases.jsonl`` as soon as
  the case finishes.
- The markdown is rewritten at the same time.
- A failed case records its error, and the rest go on.

Run on the GPU machine with ``bash bench/run_gpu.sh`` (it installs the carried wheels first).
``python bench/train_throughput.py --tiny`` runs the same cases here on the CPU, with the tiny
architecture: about 10-30 s per case, and about 100 s for c_compile (inductor on the CPU). In that
mode torch comes from ``.venv-oracle/bin/python``; without it the torch cases are skipped.
``--render FILE.json`` rewrites bench/results/train_throughput.md from a JSON that came back
from the GPU machine.

This file imports only the standard library at the top: the torch worker runs under another
interpreter, which has no jax.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS_MD = REPO / "bench" / "results" / "train_throughput.md"
MULTI_MD = REPO / "bench" / "results" / "multi_gpu.md"
# Tokenized alpaca examples (pipeline.training.batches.save_examples); the first that exists.
ALPACA_FILES = (
    REPO / "bench" / "data" / "alpaca_tokens.npz",
    REPO / "bench" / "data" / "alpaca_en_demo.npz",  # written by bench/packing_efficiency.py
)
ORACLE_PYTHON = REPO / ".venv-oracle" / "bin" / "python"
PEAK_TFLOPS = 989.4  # H100 SXM dense bf16 datasheet (research/gpu_anchors.md)
CAP_GIB = 12.0  # case d: the 12 GB card
CAP_PROFILE = "rtx3060-12gb"

# Run order: the costly torch.compile (about 2 minutes cold) last, so that a tight budget
# loses it rather than d and e (the research already has its number: 73.8k tokens/s).
ALL_CASES = ("a", "b", "c_eager", "d", "e_packed", "e_unpacked", "c_compile")
VARIANTS = ("a_dots", "a_full", "a_xla", "a_c256", "a_c1024", "a_b8")
ALIASES = {"c": ("c_eager", "c_compile"), "e": ("e_packed", "e_unpacked"), "all": ALL_CASES}
CASE_BUDGET_S = {
    "a": 150,
    "b": 150,
    "c_eager": 100,
    "c_compile": 240,
    "d": 120,
    "e_packed": 120,
    "e_unpacked": 110,
}
CASE_TITLE = {
    "a": "ours: pipeline.training.step",
    "b": "keras.Model.fit (keras-hub Gemma3CausalLM)",
    "c_eager": "HF + PEFT eager (sdpa)",
    "c_compile": "HF + PEFT torch.compile (sdpa)",
    "d": f"ours at {CAP_PROFILE}, {CAP_GIB:g} GiB cap",
    "e_packed": "ours, alpaca lengths, packing on",
    "e_unpacked": "ours, alpaca lengths, packing off",
    "a_dots": "ours, remat keeping matmul outputs",
    "a_full": "ours, remat per decoder block",
    "a_xla": "ours, XLA attention (no cuDNN)",
    "a_c256": "ours, loss chunk 256",
    "a_c1024": "ours, loss chunk 1024",
    "a_b8": "ours, batch 8",
}
# What the research measured (research/gpu_anchors.md, gpu_custom_step.md; H100, B4 x S1024).
ANCHORS = [
    ("keras.Model.fit (anchors)", 85_220, 48.1, 12.04, 24.5),
    ("HF+PEFT eager sdpa (anchors)", 29_317, 139.7, 22.06, 5.8),
    ("HF+PEFT torch.compile (anchors)", 73_801, 55.5, 8.93, 112.6),
    ("custom keras step, fused CE 512 (research)", 89_418, 45.81, 10.06, 19.1),
]


def log(*parts: object) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------------
# FLOPs (research/gpu_anchors.md): F/token = 4 N_mm + 3 A(S)
# ---------------------------------------------------------------------------------------------
def _mean_context(seq: int, window: int | None) -> float:
    """Mean number of keys a query attends under causal masking (within ``window`` if set)."""
    if window is None or window >= seq:
        return (seq + 1) / 2
    full = window * (window + 1) / 2  # queries 0..window-1 see i + 1 keys
    return (full + (seq - window) * window) / seq


def flops_per_token(arch: dict[str, Any], seq: int) -> float:
    """Training FLOPs per token of a LoRA step: the forward pass plus the input-gradient half of
    the backward pass over every matmul (tied LM head included), and attention at 1x forward
    plus 2x backward. LoRA matmuls and remat recompute are not counted."""
    d, f = arch["hidden_dim"], arch["intermediate_dim"]
    nq, nkv, hd = arch["num_query_heads"], arch["num_key_value_heads"], arch["head_dim"]
    layers = arch["num_layers"]
    qd, kvd = nq * hd, nkv * hd
    n_mm = layers * (d * qd + 2 * d * kvd + qd * d + 3 * d * f) + arch["vocabulary_size"] * d
    attn = 0.0
    for i in range(layers):
        sliding = i % 6 < 5
        ctx = _mean_context(seq, arch["sliding_window_size"] if sliding else None)
        attn += 4 * nq * hd * ctx
    return 4 * n_mm + 3 * attn


# ---------------------------------------------------------------------------------------------
# Worker side. Everything that knows the trainer's API sits in the four ``ours_*`` functions
# just below (pipeline/training/step.py, batches.py, optimizer.py, models/gemma3_jax.py,
# models/lora.py); fix them there when that API changes.
# ---------------------------------------------------------------------------------------------
def ours_setup(spec: dict[str, Any]) -> tuple[Any, Any, dict[str, Any], Any]:
    """Build our step and its initial state: ``(run, state, info, placement)`` with
    ``run(state, batch) -> (state, metrics)``. The state (adapter, optimizer state) is donated
    by the jitted step; the frozen weights are an argument, not a closure constant."""
    import jax
    import jax.numpy as jnp

    from pipeline.models.config import GemmaArch
    from pipeline.models.gemma3_jax import random_params
    from pipeline.models.lora import AdapterMeta, init_adapter, trainable_parameter_count
    from pipeline.profiles import TrainConfig
    from pipeline.training import optimizer
    from pipeline.training.step import build_train_step

    arch = GemmaArch.from_dict(spec["arch"])
    lora = spec["lora"]
    meta = AdapterMeta(
        rank=int(lora["rank"]),
        alpha=float(lora["alpha"]),
        targets=tuple(lora["targets"]),
        arch=arch,
    )
    train_cfg = TrainConfig(**spec["train"])
    total = int(train_cfg.max_steps or 1000)
    step = build_train_step(
        arch,
        meta,
        train_cfg,
        total_steps=total,
        compute_dtype=train_cfg.precision,
        impl=spec.get("impl"),
        remat=spec.get("remat_policy"),
    )
    frozen = random_params(arch, spec["dtype"], spec["seed"])
    adapter = jax.tree.map(jnp.asarray, init_adapter(meta, spec["seed"]))
    state = (adapter, optimizer.init_state(adapter))
    placement = None
    if "devices" in spec:  # the trainer's own placement (gN cases)
        from pipeline.training.distribute import plan_placement

        placement = plan_placement(train_cfg)
        frozen = placement.put_frozen(frozen)
        state = placement.put_replicated(state)
        step = build_train_step(
            arch, meta, train_cfg, total_steps=total, compute_dtype=train_cfg.precision,
            impl=spec.get("impl"), remat=spec.get("remat_policy"), placement=placement,
        )  # fmt: skip

    def run(state: Any, batch: Any) -> tuple[Any, Any]:
        adapter, opt_state, metrics = step.run(state[0], state[1], frozen, batch)
        return (adapter, opt_state), metrics

    info = {
        "train_config": dataclasses.asdict(train_cfg),
        "lora": lora,
        "n_lora_params": trainable_parameter_count(meta),
        "attention_impl": step.impl,
        "packed_attention": step.packed,
    }
    if placement is not None:
        info["placement"] = placement.describe(train_cfg.batch_size)
        info["n_devices"] = placement.size
    jax.block_until_ready((frozen, state))
    return run, state, info, placement


def ours_device_batch(micro_batches: list[dict[str, Any]], placement: Any = None) -> Any:
    """One optimizer step's batch on the device: ``[A, B, S]`` arrays (A micro-batches), its
    rows split across the placement's devices when there is one."""
    import jax

    from pipeline.training.step import stack_micro_batches

    batch = stack_micro_batches(micro_batches)
    return jax.device_put(batch) if placement is None else placement.put_batch(batch)


def ours_load_examples(path: str, seq: int) -> Any:
    """The tokenized examples of a ``save_examples`` file, cut by the trainer's rule."""
    from pipeline.training.batches import load_examples, truncate_examples

    return truncate_examples(load_examples(path), seq).examples


def ours_stream_batches(
    examples: Any, batch: int, seq: int, packing: bool, seed: int, count: int
) -> list[dict[str, Any]]:
    """``count`` batches (dicts of [B, S] numpy arrays) from the trainer's BatchStream."""
    from pipeline.training.batches import BatchStream

    stream = BatchStream(
        examples, batch_size=batch, sequence_length=seq, packing=packing, seed=seed
    )
    return [stream.next_batch() for _ in range(count)]


def _synthetic_examples(seed: int, count: int, seq: int) -> Any:
    """Stand-in for the alpaca token file (``--tiny`` only): lognormal lengths, the last 40%
    of each example trained."""
    import numpy as np

    from pipeline.training.batches import Example, truncate_examples

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(np.clip(rng.lognormal(math.log(seq / 5), 0.6), 8, seq * 2))
        ids = rng.integers(3, 262_144, size=n, dtype=np.int32)
        mask = np.zeros(n, dtype=np.bool_)
        mask[int(n * 0.6) :] = True
        out.append(Example(ids=ids, mask=mask))
    return truncate_examples(out, seq).examples


def _random_rows(seed: int, vocab: int, batch: int, seq: int, count: int) -> list[dict]:
    """Unpacked rows of random tokens, every position trained (the research's setup)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
        out.append(
            {
                "token_ids": ids[:, :-1].copy(),
                "targets": ids[:, 1:].copy(),
                "loss_mask": np.ones((batch, seq), np.float32),
                "segment_ids": np.ones((batch, seq), np.int32),
                "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            }
        )
    return out


class Record(dict):
    """The case's result, saved atomically after every phase (a timeout keeps what was done)."""

    def __init__(self, path: Path, spec: dict[str, Any]):
        super().__init__(case=spec["case"], kind=spec["kind"], spec=spec, ok=False, phase="start")
        self.path = path
        self.save()

    def phase(self, name: str, **values: Any) -> None:
        self["phase"] = name
        self.update(values)
        self.save()
        log(f"[{self['case']}] {name} " + json.dumps(_short(values)))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, default=str, indent=1))
        tmp.replace(self.path)


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in values.items()
        if not isinstance(v, dict | list)
    }


def _is_oom(message: str) -> bool:
    m = message.lower()
    return "resource_exhausted" in m or "out of memory" in m or "outofmemory" in m


def measure(
    step: Any, sync: Any, *, warmup: int, blocked: int, steps: int, rec: Record
) -> dict[str, Any]:
    """Time ``step(i)`` (which returns something to sync on and a loss getter).

    First call = compile + one step; then ``warmup`` steps and a sync, ``blocked`` steps synced
    one by one, and ``steps`` steps dispatched back to back with one sync at the end
    (pipelined: the reported step time)."""
    t0 = time.perf_counter()
    out, loss = step(0)
    sync(out)
    compile_s = time.perf_counter() - t0
    rec.phase("compiled", compile_s=compile_s, loss_first=loss())
    i = 1
    for _ in range(warmup):
        out, loss = step(i)
        i += 1
    sync(out)
    times = []
    for _ in range(blocked):
        t0 = time.perf_counter()
        out, loss = step(i)
        sync(out)
        times.append(time.perf_counter() - t0)
        i += 1
    first_timed = i
    t0 = time.perf_counter()
    for _ in range(steps):
        out, loss = step(i)
        i += 1
    sync(out)
    pipelined = (time.perf_counter() - t0) / steps
    res = {
        "step_ms": pipelined * 1e3,
        "timed_steps": steps,
        "first_timed_index": first_timed,
        "loss_last": loss(),
    }
    if times:
        res.update(
            blocked_step_ms=statistics.median(times) * 1e3,
            blocked_step_ms_min=min(times) * 1e3,
            blocked_step_ms_max=max(times) * 1e3,
        )
    return res


def _jax_setup(spec: dict[str, Any]) -> Any:
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import jax

    cache = spec.get("jax_cache")
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return jax


def _jax_info(jax: Any, spec: dict[str, Any]) -> dict[str, Any]:
    import jaxlib

    dev = jax.devices()[0]
    info = {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "device": str(getattr(dev, "device_kind", dev.platform)),
        "platform": dev.platform,
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
    }
    cache = spec.get("jax_cache")
    if cache and Path(cache).is_dir():
        info["jax_cache_entries_before"] = sum(1 for _ in Path(cache).iterdir())
    return info


def _jax_memory(jax: Any, device: Any = None) -> dict[str, Any]:
    try:
        stats = (device or jax.devices()[0]).memory_stats() or {}
    except Exception:
        stats = {}
    out: dict[str, Any] = {}
    if "peak_bytes_in_use" in stats:
        out["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    if "bytes_limit" in stats:
        out["bytes_limit_gib"] = stats["bytes_limit"] / 2**30
    return out


def _loss_of(metrics: Any) -> float | None:
    import numpy as np

    value = metrics.get("loss") if isinstance(metrics, dict) else metrics
    try:
        return float(np.asarray(value).reshape(-1)[0])
    except Exception:
        return None


def worker_ours(spec: dict[str, Any], rec: Record) -> None:
    jax = _jax_setup(spec)
    import numpy as np

    rec.phase("imported", versions=_jax_info(jax, spec))
    batch, seq = spec["batch"], spec["seq"]
    accum = int(spec["train"].get("gradient_accumulation_steps", 1))
    t0 = time.perf_counter()
    run, state, info, placement = ours_setup(spec)
    jax.block_until_ready(state)
    rec.phase("built", build_s=time.perf_counter() - t0, **info)

    if spec["data"] == "alpaca":
        path = spec["alpaca_path"]
        if Path(path).is_file():
            examples = ours_load_examples(path, seq)
            source = str(Path(path).relative_to(REPO) if Path(path).is_relative_to(REPO) else path)
        elif spec["tiny"]:
            examples = _synthetic_examples(spec["seed"], 2000, seq)
            source = "synthetic lognormal lengths (no alpaca file; --tiny only)"
        else:
            raise FileNotFoundError(f"{path} is missing: carry it (bench/data is git-ignored)")
        lengths = np.asarray(examples.lengths)
        count = (spec["steps"] + spec["warmup"] + spec["blocked"] + 1) * accum
        host = ours_stream_batches(examples, batch, seq, spec["packing"], spec["seed"], count)
        rec.phase(
            "data",
            data_source=source,
            n_examples=len(examples),
            example_len_mean=float(lengths.mean()),
            example_len_median=float(np.median(lengths)),
            example_len_p90=float(np.percentile(lengths, 90)),
        )
    else:
        host = _random_rows(spec["seed"], spec["arch"]["vocabulary_size"], batch, seq, 4 * accum)
    # One optimizer step = ``accum`` micro-batches of [B, S].
    groups = [host[i : i + accum] for i in range(0, len(host) - accum + 1, accum)]
    batches = [ours_device_batch(g, placement) for g in groups]
    holder = {"state": state}
    del state

    def step(i: int) -> tuple[Any, Any]:
        holder["state"], metrics = run(holder["state"], batches[i % len(batches)])
        return (holder["state"], metrics), lambda: _loss_of(metrics)

    res = measure(
        step,
        jax.block_until_ready,
        warmup=spec["warmup"],
        blocked=spec["blocked"],
        steps=spec["steps"],
        rec=rec,
    )
    res["tokens_per_s"] = accum * batch * seq / (res["step_ms"] / 1e3)
    if spec["data"] == "alpaca":
        # Trained tokens of exactly the batches the pipelined loop went through.
        first, n = res["first_timed_index"], res["timed_steps"]
        used = [row for j in range(first, first + n) for row in groups[j % len(groups)]]
        trained = sum(float(np.asarray(b["loss_mask"]).sum()) for b in used)
        real = sum(float((np.asarray(b["segment_ids"]) > 0).sum()) for b in used)
        segs = sum(_count_segments(np.asarray(b["segment_ids"])) for b in used)
        seconds = res["step_ms"] / 1e3 * n
        res.update(
            trained_tokens_per_s=trained / seconds,
            examples_per_s=segs / seconds,
            fill=real / (len(used) * batch * seq),
            trained_fraction=trained / (len(used) * batch * seq),
        )
    res.update(_jax_memory(jax))
    if placement is not None:
        res["per_device"] = [
            {"device": str(d), **_jax_memory(jax, d)} for d in placement.local_devices
        ]
    rec.phase("timed", **res)


def _count_segments(segment_ids: Any) -> int:
    return int(sum(len(set(row[row > 0].tolist())) for row in segment_ids))


def worker_keras_fit(spec: dict[str, Any], rec: Record) -> None:
    jax = _jax_setup(spec)
    import keras
    import keras_hub
    import numpy as np

    from pipeline.models.config import GemmaArch, build_backbone

    versions = _jax_info(jax, spec)
    versions.update(keras=keras.__version__, keras_hub=keras_hub.__version__)
    rec.phase("imported", versions=versions)
    arch = GemmaArch.from_dict(spec["arch"])
    batch, seq, lora = spec["batch"], spec["seq"], spec["lora"]
    t0 = time.perf_counter()
    backbone = build_backbone(arch, dtype=spec["dtype"], seed=spec["seed"])
    backbone.enable_lora(rank=int(lora["rank"]))
    lora_layers = 0
    for layer in backbone._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            layer.lora_alpha = float(lora["alpha"])  # keras-hub's enable_lora has no alpha
            lora_layers += 1
    model = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=None,
    )
    n_train = int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))
    try:
        fused = bool(backbone.transformer_layers[0].attention._use_fused_attention_op())
    except Exception as exc:
        fused = f"? {exc!r}"[:120]
    rec.phase(
        "built",
        build_s=time.perf_counter() - t0,
        n_lora_params=n_train,
        lora_layers=lora_layers,
        fused_attention_op=fused,
    )

    rng = np.random.default_rng(spec["seed"])
    vocab = arch.vocabulary_size

    def arrays(n_batches: int) -> tuple[dict[str, Any], Any]:
        ids = rng.integers(0, vocab, size=(n_batches * batch, seq + 1), dtype=np.int32)
        x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((n_batches * batch, seq), np.int32)}
        return x, ids[:, 1:]

    def fit(n_batches: int) -> float:
        x, y = arrays(n_batches)
        hist = keras.Model.fit(model, x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        return float(hist.history["loss"][-1])

    t0 = time.perf_counter()
    loss0 = fit(1)
    rec.phase("compiled", compile_s=time.perf_counter() - t0, loss_first=loss0)
    fit(max(spec["warmup"], 1))
    steps = spec["steps"]
    x, y = arrays(steps)
    t0 = time.perf_counter()
    hist = keras.Model.fit(model, x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - t0
    res = {
        "step_ms": seconds / steps * 1e3,
        "timed_steps": steps,
        "tokens_per_s": steps * batch * seq / seconds,
        "loss_last": float(hist.history["loss"][-1]),
        "timing": "wall time of one keras.Model.fit over the timed batches (after a warm fit)",
    }
    res.update(_jax_memory(jax))
    rec.phase("timed", **res)


LORA_TO_PEFT = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}


def worker_torch(spec: dict[str, Any], rec: Record) -> None:
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cuda = not spec["tiny"] and torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    rec.phase(
        "imported",
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        },
    )
    a, lora = spec["arch"], spec["lora"]
    config = Gemma3TextConfig(
        vocab_size=a["vocabulary_size"],
        hidden_size=a["hidden_dim"],
        intermediate_size=a["intermediate_dim"],
        num_hidden_layers=a["num_layers"],
        num_attention_heads=a["num_query_heads"],
        num_key_value_heads=a["num_key_value_heads"],
        head_dim=a["head_dim"],
        sliding_window=a["sliding_window_size"],
        sliding_window_pattern=6,
        query_pre_attn_scalar=a["head_dim"],
        rms_norm_eps=a.get("layer_norm_epsilon", 1e-6),
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        max_position_embeddings=32768,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(spec["seed"])
    t0 = time.perf_counter()
    with torch.device(dev):
        model = Gemma3ForCausalLM._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    model.train()
    lcfg = LoraConfig(
        r=int(lora["rank"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=0.0,
        target_modules=[LORA_TO_PEFT[t] for t in lora["targets"]],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rec.phase(
        "built",
        build_s=time.perf_counter() - t0,
        n_lora_params=int(sum(p.numel() for p in params)),
        torch_compile=bool(spec["compile"]),
    )

    def loss_eager(x: Any) -> Any:
        return model(input_ids=x, labels=x).loss

    loss_fn = torch.compile(loss_eager) if spec["compile"] else loss_eager
    batch, seq = spec["batch"], spec["seq"]
    gen = torch.Generator(device="cpu").manual_seed(spec["seed"])
    batches = [
        torch.randint(0, a["vocabulary_size"], (batch, seq), generator=gen).to(dev)
        for _ in range(4)
    ]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> tuple[Any, Any]:
        loss = loss_fn(batches[i % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return None, lambda: float(loss.detach().float().cpu())

    def sync(_: Any) -> None:
        if cuda:
            torch.cuda.synchronize()

    res = measure(
        step, sync, warmup=spec["warmup"], blocked=spec["blocked"], steps=spec["steps"], rec=rec
    )
    res["tokens_per_s"] = batch * seq / (res["step_ms"] / 1e3)
    if cuda:
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    rec.phase("timed", **res)


WORKERS = {"ours": worker_ours, "keras_fit": worker_keras_fit, "torch": worker_torch}


def worker_main(spec_json: str, result_path: str) -> int:
    spec = json.loads(spec_json)
    rec = Record(Path(result_path), spec)
    started = time.perf_counter()
    try:
        WORKERS[spec["kind"]](spec, rec)
        rec["ok"] = True
    except BaseException as exc:  # record everything, even KeyboardInterrupt from a timeout
        message = f"{type(exc).__name__}: {exc}"
        rec["error"] = message[:3000]
        rec["traceback"] = traceback.format_exc()[-6000:]
        rec["oom"] = _is_oom(message)
        log(f"[{spec['case']}] FAILED in phase {rec.get('phase')}: {message[:800]}")
    rec["worker_wall_s"] = time.perf_counter() - started
    rec.save()
    return 0 if rec["ok"] else 1


# ---------------------------------------------------------------------------------------------
# Orchestrator side
# ---------------------------------------------------------------------------------------------
NOISE = re.compile(r"^(?:[WI]\d{4} \d\d:\d\d|WARNING: All log messages before absl)")


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    gpu = _sh(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"])
    if gpu:
        info["gpus"] = gpu.splitlines()
        info["gpu_count"] = len(info["gpus"])
        total = _sh(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        with contextlib.suppress(ValueError, IndexError):
            info["gpu_total_mib"] = float(total.splitlines()[0])
    versions = {}
    names = (
        "jax jaxlib jax-cuda13-plugin jax-cuda12-plugin keras keras-hub numpy torch "
        "transformers peft triton optree nvidia-cudnn-cu13"
    )
    for name in names.split():
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    info["versions"] = versions
    return info


def _kill_group(proc: subprocess.Popen) -> None:
    """End the worker and everything it started (its own session: torch.compile workers)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_worker(
    case: str,
    spec: dict[str, Any],
    python: str,
    env: dict[str, str],
    limit_s: float,
    workdir: Path,
    log_fh: Any,
) -> dict[str, Any]:
    result = workdir / f"{case}.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    cmd += ["--result", str(result)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_fh.write(f"[{case}] {line}")
            log_fh.flush()
            tail.append(line.rstrip()[:400])
            if not NOISE.match(line):
                shown = line if line.startswith(f"[{case}]") else f"[{case}] {line}"
                print(f"  {shown}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        rc = proc.returncode
    reader.join(timeout=10)
    try:
        rec = json.loads(result.read_text())
    except (OSError, json.JSONDecodeError):
        rec = {"case": case, "kind": spec["kind"], "spec": spec, "ok": False, "phase": "none"}
    rec.update(returncode=rc, wall_s=time.perf_counter() - started, limit_s=limit_s)
    if timed_out:
        rec["ok"] = False
        rec["timed_out"] = True
        rec.setdefault("error", f"timed out after {limit_s:.0f} s in phase {rec.get('phase')}")
    elif not rec.get("ok") and "error" not in rec:
        rec["error"] = f"worker exited {rc} in phase {rec.get('phase')}: " + " | ".join(
            list(tail)[-6:]
        )
    if not rec.get("ok"):
        rec["log_tail"] = list(tail)[-25:]
    return rec


def _arch_dict(name: str) -> dict[str, Any]:
    from pipeline.models.config import ARCH_1B, ARCH_TINY

    return (ARCH_TINY if name == "tiny" else ARCH_1B).to_dict()


def _train_dict(batch: int, seq: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "batch_size": batch,
        "gradient_accumulation_steps": 1,
        "sequence_length": seq,
        "learning_rate": 1e-4,
        "schedule": "constant",
        "warmup_steps": 0,
        "max_steps": 1000,
        "precision": "bfloat16",
        "packing": False,
        "remat": False,
    }
    base.update(overrides)
    return base


def make_spec(case: str, args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """The worker's whole input. Raises ``LookupError`` with a reason to skip the case."""
    tiny = args.tiny
    batch, seq = (2, 64) if tiny else (args.batch, args.seq)
    lora = {"rank": 8, "alpha": 16.0, "targets": ["q", "v"]}
    spec: dict[str, Any] = {
        "case": case,
        "tiny": tiny,
        "arch": _arch_dict("tiny" if tiny else "1b"),
        "batch": batch,
        "seq": seq,
        "dtype": "bfloat16",
        "lora": lora,
        "seed": 0,
        "warmup": 1 if tiny else args.warmup,
        "blocked": 2 if tiny else args.blocked,
        "steps": 3 if tiny else args.steps,
        "jax_cache": None if (tiny or args.no_jax_cache) else args.jax_cache,
        "data": "random",
    }
    # --tiny: chunk the loss in two, as the profile validation caps the chunk at the sequence.
    tiny_chunk = {"loss_chunk_size": seq // 2} if tiny else {}
    if case == "a":
        spec.update(kind="ours", train=_train_dict(batch, seq, **tiny_chunk))
    elif case.startswith("a_"):
        # Variants of (a), modifiers joined by "_": dots (remat keeping matmul outputs), full
        # (remat per block), xla (XLA attention), cN (loss chunk N), b8 (batch 8).
        overrides: dict[str, Any] = dict(tiny_chunk)
        mods = case[2:].split("_")
        for mod in mods:
            if mod.startswith("c") and mod[1:].isdigit() and not tiny:
                overrides["loss_chunk_size"] = int(mod[1:])
            if mod == "b8":
                batch = 2 * batch
                spec["batch"] = batch
        spec.update(kind="ours", train=_train_dict(batch, seq, **overrides))
        if "dots" in mods:
            spec["remat_policy"] = "dots"
        elif "full" in mods:
            spec["remat_policy"] = True
        if "xla" in mods:
            spec["impl"] = "xla"
    elif re.fullmatch(r"g\d+", case):
        n = int(case[1:])
        if n < 1:
            raise LookupError("g0: at least one device")
        gpus = machine.get("gpu_count")
        if not tiny and gpus is not None and n > gpus:
            raise LookupError(f"{n} GPUs asked for, {gpus} on this machine")
        if batch % n:
            raise LookupError(f"batch {batch} does not split across {n} devices")
        spec.update(
            kind="ours", devices=n, train=_train_dict(batch, seq, devices=str(n), **tiny_chunk)
        )
    elif case == "b":
        spec.update(kind="keras_fit")
    elif case in ("c_eager", "c_compile"):
        spec.update(kind="torch", compile=case == "c_compile")
    elif case == "d":
        from pipeline.profiles import load_profile

        prof = load_profile(CAP_PROFILE)
        t = prof.train
        batch = t.batch_size
        seq = min(t.sequence_length, 64) if tiny else t.sequence_length
        train = dataclasses.asdict(t)
        # The profile as it is (accumulation included: one run is one optimizer step), with a
        # fixed length instead of epochs.
        train.update(
            sequence_length=seq,
            max_steps=1000,
            epochs=None,
            warmup_ratio=None,
            warmup_steps=0,
        )
        if tiny:
            train["loss_chunk_size"] = min(t.loss_chunk_size, seq // 2)
        spec.update(
            kind="ours",
            batch=batch,
            seq=seq,
            train=train,
            dtype=prof.model.dtype,
            lora={
                "rank": prof.lora.rank,
                "alpha": prof.lora.alpha,
                "targets": list(prof.lora.targets),
            },
            profile=CAP_PROFILE,
            profile_accumulation=t.gradient_accumulation_steps,
        )
        total = machine.get("gpu_total_mib")
        if total and not tiny:
            spec["mem_fraction"] = math.floor(CAP_GIB * 1024 / total * 1e4) / 1e4
            spec["cap_gib"] = spec["mem_fraction"] * total / 1024
        else:
            spec["cap_note"] = "no GPU: the memory cap is not applied"
    elif case in ("e_packed", "e_unpacked"):
        if tiny:
            batch, seq = 2, 256
        packing = case == "e_packed"
        spec.update(
            kind="ours",
            batch=batch,
            seq=seq,
            train=_train_dict(batch, seq, packing=packing, **tiny_chunk),
            data="alpaca",
            packing=packing,
            alpaca_path=str(Path(args.alpaca).resolve()),
            steps=3 if tiny else args.data_steps,
        )
        if not tiny and not Path(args.alpaca).is_file():
            raise LookupError(f"{args.alpaca} is missing (carry it: bench/data is git-ignored)")
    else:
        raise LookupError(f"unknown case {case}")
    if spec["kind"] == "torch":
        if tiny:
            if not ORACLE_PYTHON.exists():
                raise LookupError("--tiny: no .venv-oracle/bin/python (torch is not in .venv)")
            spec["python"] = str(ORACLE_PYTHON)
        else:
            spec["python"] = args.torch_python or sys.executable
    else:
        spec["python"] = sys.executable
    return spec


def worker_env(spec: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["KERAS_BACKEND"] = "jax"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    if "mem_fraction" in spec:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{spec['mem_fraction']:.4f}"
    if spec["tiny"]:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        if spec.get("devices", 1) > 1:  # CPU devices to split across
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
    return env


def finalize(rec: dict[str, Any], peak_tflops: float) -> dict[str, Any]:
    """Derived numbers: MFU, and for the capped case whether it fits."""
    spec = rec.get("spec", {})
    tps = rec.get("tokens_per_s")
    if tps and spec.get("arch"):
        f = flops_per_token(spec["arch"], spec["seq"])
        rec["flops_per_token"] = f
        rec["mfu"] = tps * f / (peak_tflops * 1e12)
    if spec.get("case") == "d":
        if rec.get("ok"):
            rec["fits"] = True
        elif rec.get("oom") or _is_oom(str(rec.get("error", ""))):
            rec["fits"] = False
    return rec


def expand_cases(text: str) -> list[str]:
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        names = ALIASES.get(name, (name,))
        for n in names:
            if n not in ALL_CASES and not n.startswith("a_") and not re.fullmatch(r"g\d+", n):
                raise SystemExit(f"unknown case {n!r}; choose from {', '.join(ALL_CASES)}, c, e")
            if n not in out:
                out.append(n)
    return out


def parse_budgets(text: str) -> dict[str, float]:
    budgets = dict(CASE_BUDGET_S)
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        for n in ALIASES.get(name, (name,)):
            if n not in budgets:
                raise SystemExit(f"--case-budget: unknown case {n!r}")
            budgets[n] = float(value)
    return budgets


def _multi(summary: dict[str, Any]) -> bool:
    return any(re.fullmatch(r"g\d+", c) for c in summary["cases_requested"])


def write_outputs(summary: dict[str, Any], out: Path, md_paths: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "train_throughput.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(out / "train_throughput.json")
    text = render_md(summary)
    for path in md_paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if _multi(summary):
        multi = render_multi_md(summary)
        (out / "multi_gpu.md").write_text(multi)
        if not summary["tiny"]:
            MULTI_MD.write_text(multi)


def orchestrate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    deadline = started + args.budget_s
    cases = expand_cases(args.cases)
    budgets = parse_budgets(args.case_budget)
    default_out = Path(tempfile.gettempdir()) / (
        "train_throughput_tiny" if args.tiny else "train_throughput"
    )
    out = Path(args.out or os.environ.get("OUT") or default_out)
    out.mkdir(parents=True, exist_ok=True)
    md_paths = [out / "train_throughput.md"]
    if args.md:
        md_paths.append(Path(args.md))
    elif not args.tiny and not any(re.fullmatch(r"g\d+", c) for c in cases):
        md_paths.append(RESULTS_MD)  # a multi-GPU run writes multi_gpu.md instead
    workdir = Path(tempfile.mkdtemp(prefix="train_throughput_"))
    machine = machine_info()
    summary: dict[str, Any] = {
        "title": "LoRA training throughput",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": os.environ.get("TT_COMMAND") or " ".join([Path(sys.executable).name, *sys.argv]),
        "tiny": args.tiny,
        "peak_tflops": args.peak_tflops,
        "budget_s": args.budget_s,
        "cases_requested": cases,
        "machine": machine,
        "cases": [],
    }
    log(f"train_throughput: cases {cases}, budget {args.budget_s:.0f} s, out {out}")
    log("machine: " + json.dumps(machine))
    write_outputs(summary, out, md_paths)
    min_start = 5.0 if args.tiny else args.min_case_s
    with (
        (out / "train_throughput.log").open("a") as log_fh,
        (out / "cases.jsonl").open("a") as jsonl,
    ):
        for case in cases:
            remaining = deadline - time.perf_counter() - args.reserve_s
            limit = min(budgets.get(case, budgets["a"]), remaining)
            elapsed = time.perf_counter() - started
            try:
                if limit < min_start:
                    raise LookupError(
                        f"out of time ({remaining:.0f} s left of the {args.budget_s:.0f} s budget)"
                    )
                spec = make_spec(case, args, machine)
            except LookupError as exc:
                rec = {"case": case, "ok": False, "skipped": True, "error": str(exc)}
                log(f"== {case}: SKIPPED: {exc}")
            else:
                title = CASE_TITLE.get(case, "ours, variant")
                log(f"== {case} ({title}) at {elapsed:.0f} s, limit {limit:.0f} s")
                rec = run_worker(
                    case, spec, spec["python"], worker_env(spec), limit, workdir, log_fh
                )
                rec = finalize(rec, args.peak_tflops)
                log(f"== {case}: " + one_line(rec))
            summary["cases"].append(rec)
            summary["elapsed_s"] = time.perf_counter() - started
            jsonl.write(json.dumps(rec, default=str) + "\n")
            jsonl.flush()
            write_outputs(summary, out, md_paths)
    summary["elapsed_s"] = time.perf_counter() - started
    write_outputs(summary, out, md_paths)
    log("")
    log(render_md(summary))
    log(f"wrote {', '.join(str(p) for p in md_paths)} and {out / 'train_throughput.json'}")
    return 0


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def one_line(rec: dict[str, Any]) -> str:
    if rec.get("skipped"):
        return f"skipped: {rec.get('error')}"
    parts = []
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        parts.append(f"{rec['step_ms']:.1f} ms/step")
    if rec.get("trained_tokens_per_s"):
        parts.append(f"{rec['trained_tokens_per_s']:,.0f} trained tok/s")
    if rec.get("peak_gib") is not None:
        parts.append(f"peak {rec['peak_gib']:.2f} GiB")
    if rec.get("compile_s") is not None:
        parts.append(f"compile {rec['compile_s']:.1f} s")
    if rec.get("mfu"):
        parts.append(f"MFU {rec['mfu']:.1%}")
    if not rec.get("ok"):
        parts.append(f"FAILED: {str(rec.get('error'))[:300]}")
    return ", ".join(parts) + f" (wall {rec.get('wall_s', 0):.0f} s)"


def _config(rec: dict[str, Any]) -> str:
    spec = rec.get("spec") or {}
    if not spec:
        return "–"
    text = f"B{spec.get('batch')} S{spec.get('seq')}"
    train = spec.get("train") or {}
    if spec.get("kind") == "ours" and "loss_chunk_size" in train:
        text += f", loss chunk {train['loss_chunk_size']}"
    if train.get("gradient_accumulation_steps", 1) > 1:
        text += f", accumulation {train['gradient_accumulation_steps']}"
    if train.get("packing"):
        text += ", packing"
    if train.get("remat"):
        text += ", remat"
    return text


def _run_lines(summary: dict[str, Any]) -> list[str]:
    """The Date, Command, Machine and Versions lines of a report."""
    machine = summary.get("machine", {})
    gpus = "; ".join(machine.get("gpus", [])) or "no GPU (CPU only)"
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    return [
        f"- Date: {summary.get('date')}",
        f"- Command: `{summary.get('command')}`",
        f"- Machine: {gpus}; {machine.get('cpus')} CPUs; Python {machine.get('python')}; "
        f"{machine.get('platform')}",
        f"- Versions: {versions}",
    ]


def render_multi_md(summary: dict[str, Any]) -> str:
    """bench/results/multi_gpu.md: the gN cases (one global batch over 1, 2, ... GPUs), the
    scaling against g1 and the per-device peak; case a (plain step, one GPU) beside them."""
    recs = {r["case"]: r for r in summary.get("cases", [])}
    g_cases = sorted((c for c in recs if re.fullmatch(r"g\d+", c)), key=lambda c: int(c[1:]))
    first = recs.get(g_cases[0]) if g_cases else None
    shape = ""
    if first and first.get("spec"):
        shape = f"{first['spec'].get('batch')} x {first['spec'].get('seq')}"
    lines = ["# Training on several GPUs: data parallel LoRA on Gemma 3 1B (random weights)", ""]
    if summary.get("tiny"):
        lines += ["**`--tiny` smoke run on CPU devices: these numbers mean nothing.**", ""]
    lines += _run_lines(summary)
    lines += [
        f"- Setup: {'tiny' if summary.get('tiny') else 'Gemma 3 1B'} architecture, random "
        f"weights, bf16, global batch {shape or '?'} "
        "(random tokens, every position trained), LoRA rank 8 / alpha 16 on q and v, loss "
        "chunk 512. gN: the trainer's placement (`pipeline.training.distribute`, keras "
        "`DataParallel` over a `DeviceMesh` of N GPUs): each GPU takes batch / N rows, XLA "
        "all-reduces the LoRA gradients. Each case runs in its own process "
        "(`XLA_PYTHON_CLIENT_PREALLOCATE=false`, so the peak is what the step needs).",
        "- tokens/s: N steps dispatched back to back, then one sync; the global batch's tokens "
        "over the step time. Scaling: tokens/s over g1's; efficiency: scaling / N.",
        "",
        "| case | GPUs | rows per GPU | tokens/s | step ms | scaling | efficiency "
        "| peak GiB per GPU | compile s | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    base = (recs.get("g1") or {}).get("tokens_per_s")
    for case in g_cases:
        rec = recs[case]
        n = int(case[1:])
        if not rec.get("ok"):
            lines.append(f"| {case} | {n} | | | | | | | | {rec.get('error') or 'failed'} |")
            continue
        tps = rec.get("tokens_per_s")
        scaling = tps / base if (tps and base) else None
        peaks = ", ".join(
            f"{d['peak_gib']:.2f}" for d in rec.get("per_device") or [] if "peak_gib" in d
        )
        rows = (rec.get("spec", {}).get("batch") or 0) // n
        lines.append(
            f"| {case} | {n} | {rows} | {_num(tps)} | {_num(rec.get('step_ms'), '{:.1f}')} | "
            f"{_num(scaling, '{:.2f}x')} | {_num(scaling / n if scaling else None, '{:.0%}')} | "
            f"{peaks or '–'} | {_num(rec.get('compile_s'), '{:.1f}')} | "
            f"{rec.get('placement', '')} |"
        )
    if "a" in recs and recs["a"].get("ok"):
        a = recs["a"]
        lines += [
            "",
            f"Case a (the step without a placement, batch {a.get('spec', {}).get('batch')} x "
            f"{a.get('spec', {}).get('seq')}, one GPU): {_num(a.get('tokens_per_s'))} tokens/s, "
            f"{_num(a.get('step_ms'), '{:.1f}')} ms, peak {_num(a.get('peak_gib'), '{:.2f}')} "
            "GiB.",
        ]
    lines.append("")
    return "\n".join(lines)


def render_md(summary: dict[str, Any]) -> str:
    recs = {r["case"]: r for r in summary.get("cases", [])}
    tiny = summary.get("tiny")
    lines = [
        "# Training throughput: LoRA on Gemma 3 1B (random weights), one GPU",
        "",
    ]
    if tiny:
        lines += [
            "**`--tiny` smoke run on the CPU (tiny architecture): these numbers mean nothing.**",
            "",
        ]
    lines += _run_lines(summary)
    lines += [
        "- Setup: Gemma 3 1B architecture, random weights, bf16. Batch 4 x sequence 1024, "
        "random tokens, every position trained. LoRA rank 8, alpha 16 on q and v. "
        "AdamW lr 1e-4. Each case runs in its own process "
        "(`XLA_PYTHON_CLIENT_PREALLOCATE=false`).",
        "- tokens/s and step ms: N steps dispatched back to back, then one sync "
        "(keras: the wall time of one `fit` over N batches after a warm `fit`). "
        "compile s: the first step, i.e. trace + compile + one step. "
        "peak: JAX `peak_bytes_in_use`, torch `max_memory_allocated`.",
        f"- MFU = tokens/s x F / {summary.get('peak_tflops', PEAK_TFLOPS)} TFLOP/s, with "
        "F = 4 N_mm + 3 A(S) = 4.128 GFLOP/token at S = 1024 (research/gpu_anchors.md).",
        f"- Wall time: {_num(summary.get('elapsed_s'), '{:.0f}')} s of a "
        f"{_num(summary.get('budget_s'), '{:.0f}')} s budget.",
        "",
        "## Main comparison (B4 x S1024)",
        "",
        "| case | system | config | tokens/s | step ms | peak GiB | compile s | MFU | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    variants = [c for c in recs if c.startswith("a_")]
    for case in ("a", *variants, "b", "c_eager", "c_compile"):
        rec = recs.get(case)
        if rec is None:
            continue
        lines.append(_row(case, rec))
    lines += [
        "",
        "Measured earlier for reference (H100, the research's own scripts):",
        "",
        "| system | tokens/s | step ms | peak GiB | compile s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, tps, ms, peak, comp in ANCHORS:
        lines.append(f"| {name} | {tps:,} | {ms} | {peak} | {comp} |")
    if "d" in recs:
        rec = recs["d"]
        spec = rec.get("spec") or {}
        cap = spec.get("cap_gib")
        fits = rec.get("fits")
        fits_text = "yes" if fits else ("**no (OOM)**" if fits is False else "?")
        lines += [
            "",
            f"## {CAP_PROFILE} under a {CAP_GIB:g} GiB cap (case d)",
            "",
            "JAX with `XLA_PYTHON_CLIENT_PREALLOCATE=true`, and "
            "`XLA_PYTHON_CLIENT_MEM_FRACTION` set to 12 GiB over the card's total. "
            "The profile's own train settings (accumulation, packing, loss chunk), random "
            "tokens in full rows; tokens/s counts every micro-batch.",
            "",
            "| profile | config | fraction | cap GiB | fits | peak GiB | JAX limit GiB | "
            "tokens/s | step ms | compile s | MFU | notes |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {CAP_PROFILE} | {_config(rec)} | {_num(spec.get('mem_fraction'), '{:.4f}')} | "
            f"{_num(cap, '{:.2f}')} | {fits_text} | {_num(rec.get('peak_gib'), '{:.2f}')} | "
            f"{_num(rec.get('bytes_limit_gib'), '{:.2f}')}"
            f" | {_num(rec.get('tokens_per_s'))} | {_num(rec.get('step_ms'), '{:.1f}')} | "
            f"{_num(rec.get('compile_s'), '{:.1f}')} | {_num(rec.get('mfu'), '{:.1%}')} | "
            f"{_notes(rec)} |",
        ]
    if "e_packed" in recs or "e_unpacked" in recs:
        lines += [
            "",
            "## Packing on the real alpaca length distribution (case e)",
            "",
            "Our step at B4 x S1024 on tokenized alpaca examples through the trainer's "
            "BatchStream. trained tokens/s counts only the positions with a loss "
            "(`loss_mask`). fill is the share of positions that hold a real token.",
            "",
            "| packing | trained tokens/s | examples/s | tokens/s (all positions) | step ms | "
            "fill | trained share | peak GiB | compile s | MFU (all positions) | notes |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for case in ("e_packed", "e_unpacked"):
            rec = recs.get(case)
            if rec is None:
                continue
            lines.append(
                f"| {'on' if case == 'e_packed' else 'off'} | "
                f"{_num(rec.get('trained_tokens_per_s'))} | "
                f"{_num(rec.get('examples_per_s'), '{:,.1f}')} | {_num(rec.get('tokens_per_s'))} "
                f"| {_num(rec.get('step_ms'), '{:.1f}')} | {_num(rec.get('fill'), '{:.1%}')} | "
                f"{_num(rec.get('trained_fraction'), '{:.1%}')} | "
                f"{_num(rec.get('peak_gib'), '{:.2f}')} | {_num(rec.get('compile_s'), '{:.1f}')} | "
                f"{_num(rec.get('mfu'), '{:.1%}')} | {_notes(rec)} |"
            )
        on, off = recs.get("e_packed", {}), recs.get("e_unpacked", {})
        if on.get("trained_tokens_per_s") and off.get("trained_tokens_per_s"):
            ratio = on["trained_tokens_per_s"] / off["trained_tokens_per_s"]
            verdict = "meets" if ratio >= 2 else "**misses**"
            lines += ["", f"Packing speed-up: **{ratio:.2f}x** trained tokens/s ({verdict} >= 2x)."]
        src = on.get("data_source") or off.get("data_source")
        if src:
            lines += [
                "",
                f"Data: {src}: {_num(on.get('n_examples') or off.get('n_examples'))} examples, "
                f"mean {_num(on.get('example_len_mean') or off.get('example_len_mean'), '{:.0f}')}"
                f" tokens, median "
                f"{_num(on.get('example_len_median') or off.get('example_len_median'), '{:.0f}')},"
                f" p90 {_num(on.get('example_len_p90') or off.get('example_len_p90'), '{:.0f}')}.",
            ]
    failed = [r for r in summary.get("cases", []) if not r.get("ok")]
    if failed:
        lines += ["", "## Failed or skipped", ""]
        for rec in failed:
            what = "skipped" if rec.get("skipped") else f"failed in phase {rec.get('phase')}"
            error = " ".join(str(rec.get("error")).split())[:500]
            lines.append(f"- {rec['case']}: {what}: {error}")
    lines += [
        "",
        "Raw per-case JSON (spec, versions, blocked medians, losses, errors) is in "
        "`train_throughput.json` next to the run's output.",
        "",
    ]
    return "\n".join(lines)


def _notes(rec: dict[str, Any]) -> str:
    notes = []
    if rec.get("skipped"):
        notes.append("skipped")
    elif rec.get("timed_out"):
        notes.append(f"timed out ({rec.get('phase')})")
    elif not rec.get("ok"):
        notes.append("OOM" if rec.get("oom") else f"failed ({rec.get('phase')})")
    if rec.get("attention_impl"):
        masked = " (masked, packed rows)" if rec.get("packed_attention") else ""
        notes.append(f"attention {rec['attention_impl']}{masked}")
    if rec.get("blocked_step_ms"):
        notes.append(f"blocked median {rec['blocked_step_ms']:.1f} ms")
    cached = (rec.get("versions") or {}).get("jax_cache_entries_before")
    if cached:
        notes.append(f"persistent compile cache held {cached} entries")
    if rec.get("peak_reserved_gib"):
        notes.append(f"reserved {rec['peak_reserved_gib']:.2f} GiB")
    if (rec.get("spec") or {}).get("cap_note"):
        notes.append(rec["spec"]["cap_note"])
    return "; ".join(notes)


def _row(case: str, rec: dict[str, Any]) -> str:
    system = CASE_TITLE.get(case, "ours, variant " + case[2:])
    return (
        f"| {case} | {system} | {_config(rec)} | {_num(rec.get('tokens_per_s'))} | "
        f"{_num(rec.get('step_ms'), '{:.1f}')} | {_num(rec.get('peak_gib'), '{:.2f}')} | "
        f"{_num(rec.get('compile_s'), '{:.1f}')} | {_num(rec.get('mfu'), '{:.1%}')} | "
        f"{_notes(rec)} |"
    )


def template_md() -> str:
    return "\n".join(
        [
            "# Training throughput: LoRA on Gemma 3 1B (random weights), one GPU",
            "",
            "No GPU numbers yet. Run on the device machine (`run`, kind `nvidia-h100-x1`, "
            'timeout_s 600, carry `[".whl", "bench/data/alpaca_en_demo.npz"]`; '
            "`bash bench/gpu_setup.sh download` fills `.whl/` here first):",
            "",
            "    bash bench/run_gpu.sh",
            "",
            "then rewrite this file from the JSON that comes back:",
            "",
            "    python bench/train_throughput.py --render <files_at>/train_throughput.json",
            "",
            "Cases: (a) our step, (b) keras.Model.fit, (c) HF + PEFT eager and torch.compile, "
            f"(d) {CAP_PROFILE} under a {CAP_GIB:g} GiB cap, and (e) packing on against off "
            "on alpaca's lengths.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="all", help="comma list: a,b,c,c_eager,c_compile,d,e,...")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny arch")
    ap.add_argument("--budget-s", type=float, default=540.0, help="total wall-time budget")
    ap.add_argument("--case-budget", default="", help="per-case limits, e.g. a=150,c_compile=240")
    ap.add_argument("--min-case-s", type=float, default=30.0, help="skip a case with less left")
    ap.add_argument("--reserve-s", type=float, default=5.0, help="kept back at the end")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--blocked", type=int, default=6, help="steps timed one sync each")
    ap.add_argument("--steps", type=int, default=12, help="pipelined steps timed")
    ap.add_argument("--data-steps", type=int, default=24, help="pipelined steps in case e")
    alpaca = next((p for p in ALPACA_FILES if p.is_file()), ALPACA_FILES[0])
    ap.add_argument("--alpaca", default=str(alpaca), help="save_examples file for case e")
    ap.add_argument("--jax-cache", default=str(Path(tempfile.gettempdir()) / "tt_jax_cache"))
    ap.add_argument("--no-jax-cache", action="store_true")
    ap.add_argument("--torch-python", default="", help="interpreter with torch (default: this)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    ap.add_argument("--out", default="", help="output folder (default $OUT, else a temp folder)")
    ap.add_argument("--md", default="", help="also write the markdown here")
    ap.add_argument("--render", default="", help="rewrite the md from this JSON and exit")
    ap.add_argument("--template", action="store_true", help="write the header-only md and exit")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.result)
    if args.template:
        RESULTS_MD.write_text(template_md())
        return 0
    if args.render:
        summary = json.loads(Path(args.render).read_text())
        multi = _multi(summary)
        target = Path(args.md) if args.md else (MULTI_MD if multi else RESULTS_MD)
        target.write_text(render_multi_md(summary) if multi else render_md(summary))
        log(f"wrote {target}")
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
