"""Our LoRA: PEFT-shaped adapters over each target's flattened matrix (HF orientation).

``y = x @ W + (alpha / rank) * (x @ A) @ B`` with ``W`` the ``(in, out)`` matrix of the target
(:func:`pipeline.export.hf_checkpoint.kernel_to_flat`), ``A: (in, r)``, ``B: (r, out)``, float32.
The adapter is a pytree ``{"layers": [{target: {"a": A, "b": B}} for each decoder block]}``
that the JAX training forward consumes; keras-hub runs it by merging
(:func:`merge_into_backbone`). Files: our ``.npz`` (:func:`save_npz`) and PEFT's
``adapter_model.safetensors`` + ``adapter_config.json`` (:func:`save_peft`), which
``PeftModel.from_pretrained`` loads onto ``Gemma3ForCausalLM``.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ExportError, ModelSourceError
from pipeline.export.hf_checkpoint import (
    BLOCK_WEIGHTS,
    Layout,
    atomic_write,
    flat_to_kernel,
    keras_shape,
    kernel_to_flat,
    read_safetensors,
    write_safetensors,
)
from pipeline.models.config import GemmaArch

TARGETS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
"""Every LoRA target, in canonical order."""

HF_MODULES: dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
"""Target -> module path inside ``model.layers.{i}`` of HF ``Gemma3ForCausalLM``."""

PEFT_PREFIX = "base_model.model.model.layers."
"""Key prefix PEFT writes for ``Gemma3ForCausalLM`` (checked against peft 0.21.2)."""
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
NPZ_FORMAT = "gemma-tui-lora"
NPZ_VERSION = 1

Adapter = dict[str, list[dict[str, dict[str, Any]]]]
"""``{"layers": [{target: {"a": (in, r), "b": (r, out)}}]}``; numpy or JAX arrays."""

_PEFT_KEY = re.compile(
    r"^base_model\.model\.(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\."
    r"((?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight$"
)
_TARGET_OF_MODULE = {module: target for target, module in HF_MODULES.items()}


def keras_kernel_path(layer: int, target: str) -> str:
    """Keras variable path of ``target``'s kernel in decoder block ``layer``."""
    return f"decoder_block_{layer}/{_keras_suffix(target)}"


def _keras_suffix(target: str) -> str:
    return BLOCK_WEIGHTS[HF_MODULES[target] + ".weight"][0]


def _layout(target: str) -> Layout:
    return BLOCK_WEIGHTS[HF_MODULES[target] + ".weight"][1]


def target_dims(arch: GemmaArch, target: str) -> tuple[int, int]:
    """``(in, out)`` of ``target``'s flattened matrix."""
    d, f = arch.hidden_dim, arch.intermediate_dim
    dims = {
        "q": (d, arch.q_dim),
        "k": (d, arch.kv_dim),
        "v": (d, arch.kv_dim),
        "o": (arch.q_dim, d),
        "gate": (d, f),
        "up": (d, f),
        "down": (f, d),
    }
    return dims[target]


@dataclass(frozen=True)
class AdapterMeta:
    """What an adapter is: rank, alpha, targets (kept in canonical order) and architecture."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    arch: GemmaArch

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {TARGETS}: {unknown}")
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_lora_config(cls, lora: Any, arch: GemmaArch) -> AdapterMeta:
        """From a profile's ``LoraConfig`` (rank, alpha, targets)."""
        return cls(rank=lora.rank, alpha=lora.alpha, targets=tuple(lora.targets), arch=arch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": NPZ_FORMAT,
            "version": NPZ_VERSION,
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "arch": self.arch.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterMeta:
        return cls(
            rank=int(data["rank"]),
            alpha=float(data["alpha"]),
            targets=tuple(data["targets"]),
            arch=GemmaArch.from_dict(data["arch"]),
        )

    def describe(self) -> str:
        """One line, e.g. ``rank 8, alpha 16, targets q,v on gemma3_270m``."""
        return (
            f"rank {self.rank}, alpha {self.alpha:g}, targets {','.join(self.targets)} "
            f"on {self.arch.name}"
        )


def trainable_parameter_count(meta: AdapterMeta) -> int:
    """Number of float32 adapter parameters: layers x sum over targets of r x (in + out)."""
    per_layer = sum(meta.rank * sum(target_dims(meta.arch, t)) for t in meta.targets)
    return meta.arch.num_layers * per_layer


def init_adapter(meta: AdapterMeta, seed: int) -> Adapter:
    """A fresh adapter as PEFT initialises it: ``A ~ U(-1/sqrt(in), 1/sqrt(in))`` (PEFT's
    ``kaiming_uniform_(a=sqrt(5))`` on ``lora_A.weight [r, in]``), ``B = 0``; numpy float32,
    the same for the same seed."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(meta.arch.num_layers):
        block = {}
        for target in meta.targets:
            d_in, d_out = target_dims(meta.arch, target)
            bound = 1.0 / math.sqrt(d_in)
            block[target] = {
                "a": rng.uniform(-bound, bound, size=(d_in, meta.rank)).astype(np.float32),
                "b": np.zeros((meta.rank, d_out), dtype=np.float32),
            }
        layers.append(block)
    return {"layers": layers}


def adapter_to_numpy(adapter: Adapter) -> Adapter:
    """A numpy float32 copy of ``adapter`` (from JAX or numpy arrays)."""
    return {
        "layers": [
            {t: {k: np.array(v, dtype=np.float32) for k, v in ab.items()} for t, ab in blk.items()}
            for blk in adapter["layers"]
        ]
    }


def check_adapter(adapter: Any, meta: AdapterMeta, *, where: str = "adapter") -> None:
    """Raise :class:`ModelSourceError` unless ``adapter`` has the structure and shapes of
    ``meta``."""
    layers = adapter.get("layers") if isinstance(adapter, Mapping) else None
    if not isinstance(layers, Sequence) or len(layers) != meta.arch.num_layers:
        got = len(layers) if isinstance(layers, Sequence) else "no"
        raise ModelSourceError(
            f"{where}: {got} layers, {meta.arch.name} has {meta.arch.num_layers}"
        )
    for i, block in enumerate(layers):
        names = tuple(t for t in TARGETS if t in block) if isinstance(block, Mapping) else ()
        if not isinstance(block, Mapping) or set(block) != set(meta.targets):
            raise ModelSourceError(
                f"{where}: layer {i} has targets {','.join(names) or 'none'}, "
                f"expected {','.join(meta.targets)}"
            )
        for target in meta.targets:
            d_in, d_out = target_dims(meta.arch, target)
            ab = block[target]
            for key, want in (("a", (d_in, meta.rank)), ("b", (meta.rank, d_out))):
                got = tuple(getattr(ab.get(key) if isinstance(ab, Mapping) else None, "shape", ()))
                if got != want:
                    raise ModelSourceError(
                        f"{where}: layer {i} {target}.{key} has shape {got}, expected {want}"
                    )


def compare_meta(found: AdapterMeta, expect: AdapterMeta) -> list[str]:
    """What differs between an adapter's meta and the expected one, in words ([] if none)."""
    diffs = []
    if found.rank != expect.rank:
        diffs.append(f"adapter rank {found.rank}, model expects {expect.rank}")
    if found.alpha != expect.alpha:
        diffs.append(f"adapter alpha {found.alpha:g}, model expects {expect.alpha:g}")
    if found.targets != expect.targets:
        diffs.append(
            f"adapter targets {','.join(found.targets)}, model expects {','.join(expect.targets)}"
        )
    if not found.arch.same_shape(expect.arch):
        a, b = found.arch.to_dict(), expect.arch.to_dict()
        fields = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in a if k != "name" and a[k] != b[k])
        diffs.append(
            f"adapter is for architecture {found.arch.name}, model is {expect.arch.name} ({fields})"
        )
    return diffs


def _check_expect(found: AdapterMeta, expect: AdapterMeta | None, where: str) -> None:
    if expect is None:
        return
    diffs = compare_meta(found, expect)
    if diffs:
        raise ModelSourceError(
            f"{where} does not fit: " + "; ".join(diffs),
            hint="Use the profile and base model the adapter was trained with.",
        )


# --------------------------------------------------------------------------- npz


def save_npz(path: str | os.PathLike[str], adapter: Adapter, meta: AdapterMeta) -> None:
    """Write ``adapter`` and ``meta`` (JSON in a uint8 array, no pickle) atomically."""
    arrays = adapter_to_numpy(adapter)
    check_adapter(arrays, meta)
    payload: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta.to_dict()).encode("utf-8"), dtype=np.uint8)
    }
    for i, block in enumerate(arrays["layers"]):
        for target in meta.targets:
            payload[f"layers.{i}.{target}.a"] = block[target]["a"]
            payload[f"layers.{i}.{target}.b"] = block[target]["b"]
    atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **payload))


def load_npz(
    path: str | os.PathLike[str], *, expect: AdapterMeta | None = None
) -> tuple[Adapter, AdapterMeta]:
    """Read a file written by :func:`save_npz`; check it against ``expect`` when given."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise ModelSourceError(f"adapter file not found: {p}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _corrupt(p, exc) from exc
    except (AttributeError, TypeError) as exc:  # a bare .npy, not an .npz
        raise _corrupt(p, ValueError("not an .npz archive")) from exc
    try:
        meta_raw = json.loads(bytes(data.pop("meta")).decode("utf-8"))
        if meta_raw.get("format") != NPZ_FORMAT:
            raise ValueError(f"format is {meta_raw.get('format')!r}, not {NPZ_FORMAT!r}")
        meta = AdapterMeta.from_dict(meta_raw)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _corrupt(p, exc) from exc
    adapter: Adapter = {"layers": []}
    for i in range(meta.arch.num_layers):
        block = {}
        for target in meta.targets:
            a, b = data.get(f"layers.{i}.{target}.a"), data.get(f"layers.{i}.{target}.b")
            if a is None or b is None:
                raise _corrupt(p, ValueError(f"layer {i} {target} is missing"))
            block[target] = {"a": a.astype(np.float32), "b": b.astype(np.float32)}
        adapter["layers"].append(block)
    check_adapter(adapter, meta, where=str(p))
    _check_expect(meta, expect, f"adapter {p}")
    return adapter, meta


def _corrupt(path: Path, exc: BaseException) -> ModelSourceError:
    return ModelSourceError(
        f"cannot read adapter file {path}: {exc}",
        hint="The file is damaged or is not a gemma-tui adapter; use another checkpoint.",
    )


# --------------------------------------------------------------------------- PEFT


def peft_config(meta: AdapterMeta, base_model_name_or_path: str | None) -> dict[str, Any]:
    """``adapter_config.json`` for ``meta`` (the fields PEFT 0.21 writes that matter)."""
    alpha: float | int = int(meta.alpha) if meta.alpha.is_integer() else meta.alpha
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": meta.rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in meta.targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def save_peft(
    folder: str | os.PathLike[str],
    adapter: Adapter,
    meta: AdapterMeta,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write ``adapter_model.safetensors`` (``lora_A.weight = A.T``, ``lora_B.weight = B.T``,
    float32) and ``adapter_config.json`` into ``folder``; return the folder. Our meta rides in
    the safetensors ``__metadata__`` (PEFT ignores it)."""
    arrays = adapter_to_numpy(adapter)
    check_adapter(arrays, meta)
    tensors: dict[str, np.ndarray] = {}
    for i, block in enumerate(arrays["layers"]):
        for target in meta.targets:
            key = f"{PEFT_PREFIX}{i}.{HF_MODULES[target]}"
            tensors[f"{key}.lora_A.weight"] = block[target]["a"].T
            tensors[f"{key}.lora_B.weight"] = block[target]["b"].T
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(
        out / PEFT_WEIGHTS,
        tensors,
        metadata={"format": "pt", "gemma_tui": json.dumps(meta.to_dict())},
    )
    text = json.dumps(peft_config(meta, base_model_name_or_path), indent=2, sort_keys=True)
    atomic_write(out / PEFT_CONFIG, lambda f: f.write(text.encode("utf-8") + b"\n"))
    return out


def load_peft(
    folder: str | os.PathLike[str], *, expect: AdapterMeta
) -> tuple[Adapter, AdapterMeta]:
    """Read a PEFT LoRA folder (ours or PEFT-written, for Gemma 3 text) and check it against
    ``expect``. PEFT files do not name the architecture: it is ``expect.arch`` checked against
    the tensor shapes (our own files also carry it and it is compared)."""
    root = Path(folder)
    config_path = root / PEFT_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError as exc:
        raise ModelSourceError(f"adapter config not found: {config_path}") from exc
    except (OSError, ValueError) as exc:
        raise _corrupt(config_path, exc) from exc
    unsupported = _unsupported_peft(config)
    if unsupported:
        raise ModelSourceError(
            f"adapter {root} uses PEFT features gemma-tui cannot run: {', '.join(unsupported)}",
            hint="Only plain LoRA (no DoRA, rsLoRA, per-layer ranks, biases) is supported.",
        )
    weights_path = root / PEFT_WEIGHTS
    tensors, st_meta = read_safetensors(weights_path)
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(config_path, exc) from exc

    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    unexpected = []
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        target = _TARGET_OF_MODULE.get(m.group(2)) if m else None
        if m is None or target is None:
            unexpected.append(key)
            continue
        found.setdefault((int(m.group(1)), target), {})[m.group(3)] = value
    if unexpected:
        raise ModelSourceError(
            f"adapter {weights_path} has tensors gemma-tui does not know: "
            + ", ".join(sorted(unexpected)[:3])
        )
    if not found:
        raise _corrupt(weights_path, ValueError("no LoRA tensors"))
    targets = tuple(t for t in TARGETS if any(t == tt for _, tt in found))
    layers = sorted({i for i, _ in found})
    arch = expect.arch
    if "gemma_tui" in st_meta:
        try:
            arch = AdapterMeta.from_dict(json.loads(st_meta["gemma_tui"])).arch
        except (KeyError, ValueError, TypeError) as exc:
            raise _corrupt(weights_path, exc) from exc
    meta = AdapterMeta(rank=rank, alpha=alpha, targets=targets, arch=arch)
    _check_expect(meta, expect, f"adapter {root}")
    if layers != list(range(arch.num_layers)):
        raise ModelSourceError(
            f"adapter {root} covers layers {_ranges(layers)}, the model has "
            f"{arch.num_layers} (0-{arch.num_layers - 1}); every layer must have every target"
        )
    adapter: Adapter = {"layers": [{} for _ in range(arch.num_layers)]}
    for (i, target), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise _corrupt(weights_path, ValueError(f"layer {i} {target} lacks lora_A or lora_B"))
        adapter["layers"][i][target] = {
            "a": np.ascontiguousarray(ab["A"].T.astype(np.float32)),
            "b": np.ascontiguousarray(ab["B"].T.astype(np.float32)),
        }
    check_adapter(adapter, meta, where=f"adapter {root}")
    return adapter, meta


def _unsupported_peft(config: Mapping[str, Any]) -> list[str]:
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}")
    for key in ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"):
        if config.get(key):
            problems.append(key)
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')}")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(key)
    for key in ("modules_to_save", "layers_to_transform", "trainable_token_indices"):
        if config.get(key):
            problems.append(key)
    return problems


def _ranges(values: Sequence[int]) -> str:
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


# --------------------------------------------------------------------------- merge


def lora_delta(adapter: Adapter, meta: AdapterMeta, layer: int, target: str) -> np.ndarray:
    """``scale * A @ B`` of one target, float32, in the flat ``(in, out)`` orientation."""
    ab = adapter["layers"][layer][target]
    a = np.asarray(ab["a"], dtype=np.float32)
    b = np.asarray(ab["b"], dtype=np.float32)
    return (np.float32(meta.scale) * (a @ b)).astype(np.float32)


def merged_kernels(
    kernels: Mapping[str, np.ndarray], adapter: Adapter, meta: AdapterMeta
) -> dict[str, np.ndarray]:
    """The target kernels with the adapter merged: keras path -> ``W + scale * A @ B`` laid
    out as the keras kernel, computed in float32 and cast to each kernel's dtype. ``kernels``
    maps keras paths (:func:`keras_kernel_path`) to arrays; only the targets are returned."""
    out: dict[str, np.ndarray] = {}
    for i in range(meta.arch.num_layers):
        for target in meta.targets:
            path = keras_kernel_path(i, target)
            if path not in kernels:
                raise ExportError(f"no kernel {path} to merge the adapter into")
            w = np.asarray(kernels[path])
            shape = keras_shape(meta.arch, _keras_suffix(target))
            if w.shape != shape:
                raise ExportError(f"kernel {path} has shape {w.shape}, expected {shape}")
            layout = _layout(target)
            flat = kernel_to_flat(w.astype(np.float32), layout) + lora_delta(
                adapter, meta, i, target
            )
            out[path] = np.ascontiguousarray(flat_to_kernel(flat, shape, layout)).astype(w.dtype)
    return out


def merge_into_backbone(backbone: Any, adapter: Adapter, meta: AdapterMeta) -> None:
    """Add ``scale * A @ B`` to ``backbone``'s target kernels in place (float32 math, then
    the variable dtype; values copied through numpy so no JAX buffer is shared)."""
    from pipeline.models.config import arch_of_backbone

    arch = arch_of_backbone(backbone)
    if not arch.same_shape(meta.arch):
        model = AdapterMeta(meta.rank, meta.alpha, meta.targets, arch)
        raise ExportError("cannot merge the adapter: " + "; ".join(compare_meta(meta, model)))
    check_adapter(adapter, meta)
    variables = {v.path: v for v in backbone.weights}
    paths = [keras_kernel_path(i, t) for i in range(meta.arch.num_layers) for t in meta.targets]
    missing = [p for p in paths if p not in variables]
    if missing:
        raise ExportError(
            f"the backbone has no plain kernel {missing[0]} (keras LoRA enabled?)",
            hint="Merge into a backbone without keras' own enable_lora.",
        )
    kernels = {p: np.array(variables[p].value) for p in paths}
    for path, value in merged_kernels(kernels, adapter, meta).items():
        variables[path].assign(np.array(value))
