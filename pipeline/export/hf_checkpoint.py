"""Hugging Face ``Gemma3ForCausalLM`` checkpoints to and from keras-hub ``Gemma3Backbone`` weights.

The name and layout mapping (research/keras_gemma3_gguf.md §6; keras-hub's own exporter
``keras_hub/src/utils/transformers/export/gemma3.py`` agrees):

* q/k/v: keras ``(N, D, Hd)`` (equation ``btd,ndh->btnh``) is HF ``[N*Hd, D]``:
  ``flat = kernel.transpose(1, 0, 2).reshape(D, N*Hd)``, ``hf = flat.T``.
* o: keras ``(N, Hd, D)`` (``btnh,nhd->btd``) is HF ``[D, N*Hd]``: ``flat = reshape(N*Hd, D)``.
* gate/up/down: keras ``(in, out)`` is HF ``[out, in]``: ``hf = kernel.T``.
* Norms: HF Gemma 3 ``Gemma3RMSNorm`` applies ``x * (1 + w)`` and keras-hub applies
  ``x * (1 + scale)``, so they are stored as is (only GGUF stores ``w + 1``).
* The embedding is tied (no ``lm_head.weight``).

"flat" is the ``(in, out)`` matrix with ``y = x @ flat``; LoRA (``pipeline.models.lora``) works
on it. The safetensors format is read and written here with numpy (the package is not in the
main environment): 8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}`` plus ``__metadata__``, then the raw little-endian data.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from pipeline.errors import ExportError, ModelSourceError
from pipeline.models.config import (
    GLOBAL_ROPE_WAVELENGTH,
    LOCAL_ROPE_WAVELENGTH,
    SLIDING_PATTERN,
    GemmaArch,
    named_arch,
)
from pipeline.utils.fileio import atomic_write

Layout = Literal["as_is", "heads_in", "heads_out", "dense"]
"""How a keras variable becomes its HF tensor: ``as_is`` (embedding, norms), ``heads_in``
(q/k/v ``(N, D, Hd)``), ``heads_out`` (o ``(N, Hd, D)``), ``dense`` (``(in, out)`` -> ``.T``)."""

BLOCK_WEIGHTS: dict[str, tuple[str, Layout]] = {
    "self_attn.q_proj.weight": ("attention/query/kernel", "heads_in"),
    "self_attn.k_proj.weight": ("attention/key/kernel", "heads_in"),
    "self_attn.v_proj.weight": ("attention/value/kernel", "heads_in"),
    "self_attn.o_proj.weight": ("attention/attention_output/kernel", "heads_out"),
    "self_attn.q_norm.weight": ("attention/query_norm/scale", "as_is"),
    "self_attn.k_norm.weight": ("attention/key_norm/scale", "as_is"),
    "input_layernorm.weight": ("pre_attention_norm/scale", "as_is"),
    "post_attention_layernorm.weight": ("post_attention_norm/scale", "as_is"),
    "pre_feedforward_layernorm.weight": ("pre_ffw_norm/scale", "as_is"),
    "post_feedforward_layernorm.weight": ("post_ffw_norm/scale", "as_is"),
    "mlp.gate_proj.weight": ("ffw_gating/kernel", "dense"),
    "mlp.up_proj.weight": ("ffw_gating_2/kernel", "dense"),
    "mlp.down_proj.weight": ("ffw_linear/kernel", "dense"),
}
"""Per decoder block: HF name after ``model.layers.{i}.`` -> (keras path after
``decoder_block_{i}/``, layout)."""

TOP_WEIGHTS: dict[str, tuple[str, Layout]] = {
    "embed_tokens.weight": ("token_embedding/embeddings", "as_is"),
    "norm.weight": ("final_normalization/scale", "as_is"),
}
"""Outside the blocks: HF name after ``model.`` -> (keras path, layout)."""

HF_PREFIXES = ("model.", "model.language_model.", "language_model.model.", "")
"""Accepted prefixes of the text weights: Gemma3ForCausalLM, Gemma3ForConditionalGeneration
(transformers 5 and 4.5x), bare Gemma3TextModel."""

MAX_POSITION_EMBEDDINGS = 32_768
WEIGHTS_NAME = "model.safetensors"


# --------------------------------------------------------------------------- layouts


def keras_shape(arch: GemmaArch, keras_suffix: str) -> tuple[int, ...]:
    """The keras variable shape of a block or top-level weight (path without the block)."""
    d, f, hd = arch.hidden_dim, arch.intermediate_dim, arch.head_dim
    n, k = arch.num_query_heads, arch.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {
        "attention/query/kernel": (n, d, hd),
        "attention/key/kernel": (k, d, hd),
        "attention/value/kernel": (k, d, hd),
        "attention/attention_output/kernel": (n, hd, d),
        "attention/query_norm/scale": (hd,),
        "attention/key_norm/scale": (hd,),
        "pre_attention_norm/scale": (d,),
        "post_attention_norm/scale": (d,),
        "pre_ffw_norm/scale": (d,),
        "post_ffw_norm/scale": (d,),
        "ffw_gating/kernel": (d, f),
        "ffw_gating_2/kernel": (d, f),
        "ffw_linear/kernel": (f, d),
        "token_embedding/embeddings": (arch.vocabulary_size, d),
        "final_normalization/scale": (d,),
    }
    return shapes[keras_suffix]


def kernel_to_flat(kernel: np.ndarray, layout: Layout) -> np.ndarray:
    """A keras kernel as the ``(in, out)`` matrix of ``y = x @ flat`` (HF weight transposed)."""
    if layout == "heads_in":
        n, d, hd = kernel.shape
        return kernel.transpose(1, 0, 2).reshape(d, n * hd)
    if layout == "heads_out":
        n, hd, d = kernel.shape
        return kernel.reshape(n * hd, d)
    return kernel


def flat_to_kernel(flat: np.ndarray, shape: tuple[int, ...], layout: Layout) -> np.ndarray:
    """Inverse of :func:`kernel_to_flat` for a keras kernel of ``shape``."""
    if layout == "heads_in":
        n, d, hd = shape
        return flat.reshape(d, n, hd).transpose(1, 0, 2)
    return flat.reshape(shape)


def _to_hf(value: np.ndarray, layout: Layout) -> np.ndarray:
    if layout == "as_is":
        return value
    return np.ascontiguousarray(kernel_to_flat(value, layout).T)


def _from_hf(value: np.ndarray, shape: tuple[int, ...], layout: Layout) -> np.ndarray:
    if layout == "as_is":
        return value
    return np.ascontiguousarray(flat_to_kernel(value.T, shape, layout))


def _hf_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    if layout == "as_is":
        return shape
    if layout == "heads_in":
        n, d, hd = shape
        return (n * hd, d)
    if layout == "heads_out":
        n, hd, d = shape
        return (d, n * hd)
    return (shape[1], shape[0])


def _entries(arch: GemmaArch, prefix: str = "model.") -> dict[str, tuple[str, Layout]]:
    """HF name -> (full keras path, layout) for every weight of ``arch``."""
    out = {prefix + hf: entry for hf, entry in TOP_WEIGHTS.items()}
    for i in range(arch.num_layers):
        for hf, (keras_suffix, layout) in BLOCK_WEIGHTS.items():
            out[f"{prefix}layers.{i}.{hf}"] = (f"decoder_block_{i}/{keras_suffix}", layout)
    return out


def _suffix(keras_path: str) -> str:
    return keras_path.split("/", 1)[1] if keras_path.startswith("decoder_block_") else keras_path


def hf_state_from_keras(
    weights: Mapping[str, np.ndarray], arch: GemmaArch
) -> dict[str, np.ndarray]:
    """HF ``Gemma3ForCausalLM`` tensors (``model.*``) from keras variable path -> array."""
    entries = _entries(arch)
    wanted = {path for path, _ in entries.values()}
    missing = sorted(wanted - set(weights))
    extra = sorted(set(weights) - wanted)
    if missing or extra:
        raise ExportError(
            "the keras weights do not match a text Gemma 3 backbone of this architecture"
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
            + (f"; unexpected: {', '.join(extra[:5])}" if extra else ""),
            hint="Keras LoRA variables (lora_kernel_*) must be merged before export.",
        )
    state: dict[str, np.ndarray] = {}
    for hf_name, (path, layout) in entries.items():
        value = np.asarray(weights[path])
        expected = keras_shape(arch, _suffix(path))
        if value.shape != expected:
            raise ExportError(f"keras weight {path} has shape {value.shape}, expected {expected}")
        state[hf_name] = _to_hf(value, layout)
    return state


def keras_weights_from_hf(
    state: Mapping[str, np.ndarray], arch: GemmaArch
) -> dict[str, np.ndarray]:
    """Keras variable path -> array from HF Gemma 3 text tensors (the inverse mapping).

    Accepts the prefixes in :data:`HF_PREFIXES`; a ``lm_head.weight`` is accepted only when
    equal to the embedding (tied). Dtypes are kept.
    """
    prefix = _detect_prefix(state)
    entries = _entries(arch, prefix)
    names = set(state)
    extra = sorted(names - set(entries))
    if "lm_head.weight" in extra:
        extra.remove("lm_head.weight")
        if not np.array_equal(state["lm_head.weight"], state[prefix + "embed_tokens.weight"]):
            raise ModelSourceError(
                "the checkpoint has an untied lm_head.weight; Gemma 3 ties it to the embedding"
            )
    missing = sorted(set(entries) - names)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors ({', '.join(missing[:3])}...)")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors ({', '.join(extra[:3])}...)")
    out: dict[str, np.ndarray] = {}
    for hf_name, (path, layout) in entries.items():
        if hf_name not in state:
            continue
        value = np.asarray(state[hf_name])
        shape = keras_shape(arch, _suffix(path))
        if value.shape != _hf_shape(shape, layout):
            want = _hf_shape(shape, layout)
            problems.append(f"{hf_name} has shape {value.shape}, expected {want}")
            continue
        out[path] = _from_hf(value, shape, layout)
    if problems:
        raise ModelSourceError(
            f"the Hugging Face weights do not match Gemma 3 {arch.name}: " + "; ".join(problems),
            hint="Check that config.json and the safetensors files belong to the same model.",
        )
    return out


def _detect_prefix(state: Mapping[str, Any]) -> str:
    for prefix in HF_PREFIXES:
        if prefix + "embed_tokens.weight" in state:
            return prefix
    raise ModelSourceError(
        "no embed_tokens.weight among the Hugging Face tensors; not a Gemma 3 text checkpoint"
    )


# --------------------------------------------------------------------------- config


def hf_config(arch: GemmaArch, dtype: str) -> dict[str, Any]:
    """``config.json`` of a ``Gemma3ForCausalLM`` (``gemma3_text``) with ``arch``.

    Carries both the transformers 5 keys (``rope_parameters``, ``layer_types``) and the
    4.5x ones (``rope_theta``, ``rope_local_base_freq``, ``sliding_window_pattern``).
    """
    layer_types = [
        "sliding_attention" if arch.is_sliding(i) else "full_attention"
        for i in range(arch.num_layers)
    ]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": arch.vocabulary_size,
        "hidden_size": arch.hidden_dim,
        "intermediate_size": arch.intermediate_dim,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_query_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "head_dim": arch.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": arch.layer_norm_epsilon,
        "query_pre_attn_scalar": arch.head_dim,
        "sliding_window": arch.sliding_window_size,
        "sliding_window_pattern": SLIDING_PATTERN,
        "_sliding_window_pattern": SLIDING_PATTERN,
        "layer_types": layer_types,
        "rope_theta": GLOBAL_ROPE_WAVELENGTH,
        "rope_local_base_freq": LOCAL_ROPE_WAVELENGTH,
        "rope_scaling": None,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_WAVELENGTH},
            "full_attention": {"rope_type": "default", "rope_theta": GLOBAL_ROPE_WAVELENGTH},
        },
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "use_bidirectional_attention": False,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def arch_from_hf_config(config: Mapping[str, Any]) -> GemmaArch:
    """The :class:`GemmaArch` of a Gemma 3 ``config.json`` (text model, or the text part of a
    multimodal one). Raises :class:`ModelSourceError` for what keras-hub's text Gemma 3 cannot
    express (soft-capping, other rope bases or scaling, another attention scale or pattern)."""
    cfg = dict(config)
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    if cfg.get("model_type", "gemma3_text") != "gemma3_text":
        raise ModelSourceError(f"config.json model_type is {cfg.get('model_type')!r}, not Gemma 3")
    try:
        arch = GemmaArch(
            name="custom",
            vocabulary_size=int(cfg["vocab_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_dim=int(cfg["hidden_size"]),
            intermediate_dim=int(cfg["intermediate_size"]),
            num_query_heads=int(cfg["num_attention_heads"]),
            num_key_value_heads=int(cfg["num_key_value_heads"]),
            head_dim=int(cfg["head_dim"]),
            sliding_window_size=int(cfg["sliding_window"]),
            layer_norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"config.json lacks a usable Gemma 3 field: {exc}") from exc
    problems = []
    if int(cfg.get("query_pre_attn_scalar", arch.head_dim)) != arch.head_dim:
        problems.append("query_pre_attn_scalar differs from head_dim")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if cfg.get(key) is not None:
            problems.append(f"{key} is set")
    local, glob, scaled = _rope_thetas(cfg)
    if scaled:
        problems.append("rope scaling is set (keras-hub's text model here uses factor 1)")
    if (local, glob) != (LOCAL_ROPE_WAVELENGTH, GLOBAL_ROPE_WAVELENGTH):
        problems.append(f"rope bases {local:g}/{glob:g} (keras-hub uses 10000/1000000)")
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        expected = [
            "sliding_attention" if arch.is_sliding(i) else "full_attention"
            for i in range(arch.num_layers)
        ]
        if list(layer_types) != expected:
            problems.append("layer_types is not the 5 sliding : 1 full pattern")
    if problems:
        raise ModelSourceError(
            "this Gemma 3 config cannot be run by keras-hub's text Gemma3Backbone: "
            + "; ".join(problems)
        )
    return named_arch(arch)


def _rope_thetas(cfg: Mapping[str, Any]) -> tuple[float, float, bool]:
    """(local base, global base, any scaling) from either config generation."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        local_p = params.get("sliding_attention") or {}
        global_p = params["full_attention"] or {}
        scaled = any(float(p.get("factor", 1.0) or 1.0) != 1.0 for p in (local_p, global_p))
        return (
            float(local_p.get("rope_theta", LOCAL_ROPE_WAVELENGTH)),
            float(global_p.get("rope_theta", GLOBAL_ROPE_WAVELENGTH)),
            scaled,
        )
    scaling = cfg.get("rope_scaling")
    scaled = isinstance(scaling, dict) and float(scaling.get("factor", 1.0) or 1.0) != 1.0
    return (
        float(cfg.get("rope_local_base_freq", LOCAL_ROPE_WAVELENGTH)),
        float(cfg.get("rope_theta", GLOBAL_ROPE_WAVELENGTH)),
        scaled,
    )


# --------------------------------------------------------------------------- backbone


def backbone_weights(backbone: Any) -> dict[str, np.ndarray]:
    """Keras variable path -> numpy copy (a copy, so no JAX buffer is shared or donated)."""
    return {v.path: np.array(v.value) for v in backbone.weights}


def assign_weights(backbone: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Assign ``weights`` (keras path -> array) to ``backbone``'s variables, cast to each
    variable's dtype. Every variable must be given, with its shape."""
    variables = {v.path: v for v in backbone.weights}
    missing = sorted(set(variables) - set(weights))
    extra = sorted(set(weights) - set(variables))
    if missing or extra:
        raise ModelSourceError(
            f"weights do not match the backbone (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for path, var in variables.items():
        value = np.asarray(weights[path])
        if tuple(value.shape) != tuple(var.shape):
            raise ModelSourceError(f"{path}: shape {value.shape}, the backbone has {var.shape}")
        var.assign(np.array(value, dtype=_np_dtype(var.dtype)))


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":  # registered by ml_dtypes (a JAX dependency)
        return np.dtype(importlib.import_module("ml_dtypes").bfloat16)
    return np.dtype(name)


def save_hf_checkpoint(
    backbone: Any, folder: str | os.PathLike[str], *, tokenizer_proto: bytes | None = None
) -> Path:
    """Write ``backbone`` as a Hugging Face ``Gemma3ForCausalLM`` folder and return its path.

    Files: ``model.safetensors`` (HF names, the variables' dtype), ``config.json``,
    ``generation_config.json``; with ``tokenizer_proto`` (the SentencePiece model bytes) also
    ``tokenizer.model``, ``tokenizer_config.json`` and ``special_tokens_map.json``. Each file
    is written atomically.
    """
    from pipeline.models.config import arch_of_backbone

    arch = arch_of_backbone(backbone)
    weights = backbone_weights(backbone)
    dtype = weights["token_embedding/embeddings"].dtype.name
    state = hf_state_from_keras(weights, arch)
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_safetensors(out / WEIGHTS_NAME, state, metadata={"format": "pt"})
        _write_json(out / "config.json", hf_config(arch, dtype))
        _write_json(
            out / "generation_config.json",
            {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0},
        )
        if tokenizer_proto is not None:
            atomic_write(out / "tokenizer.model", lambda f: f.write(tokenizer_proto))
            _write_json(out / "tokenizer_config.json", _TOKENIZER_CONFIG)
            _write_json(out / "special_tokens_map.json", _SPECIAL_TOKENS)
    except OSError as exc:
        raise ExportError(f"cannot write the Hugging Face checkpoint to {out}: {exc}") from exc
    return out


def read_hf_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], GemmaArch]:
    """(HF tensors, arch) of a folder with ``config.json`` and ``model.safetensors`` (or
    ``model.safetensors.index.json`` shards)."""
    root = Path(folder)
    config_path = root / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelSourceError(f"no config.json in {root}") from exc
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {config_path}: {exc}") from exc
    arch = arch_from_hf_config(config)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelSourceError(f"cannot read {index}: {exc}") from exc
    else:
        files = [WEIGHTS_NAME]
    state: dict[str, np.ndarray] = {}
    for name in files:
        tensors, _ = read_safetensors(root / name)
        state.update(tensors)
    return state, arch


_SPECIAL_TOKENS = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}
_TOKENIZER_CONFIG = {
    "tokenizer_class": "GemmaTokenizer",
    **_SPECIAL_TOKENS,
    "add_bos_token": True,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False,
}


# --------------------------------------------------------------------------- files


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_ST_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (name -> array) as a safetensors file, atomically, names sorted."""
    arrays: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        code = _ST_DTYPES.get(arr.dtype.name)
        if code is None:
            raise ExportError(f"cannot store {name} of dtype {arr.dtype} in safetensors")
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        arrays[name] = arr
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)

    def write(f: IO[bytes]) -> None:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays.values():
            f.write(arr.reshape(-1).view(np.uint8).data)

    atomic_write(path, write)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array copy, ``__metadata__``) of a safetensors file. A missing, truncated or
    malformed file raises :class:`ModelSourceError` naming the path."""
    p = Path(path)

    def bad(reason: str) -> ModelSourceError:
        return ModelSourceError(
            f"{p} is not a valid safetensors file: {reason}",
            hint="The file is damaged or incomplete; write or download it again.",
        )

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise bad(f"header length {n} does not fit a file of {size} bytes")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise bad(f"header is not JSON ({exc})") from exc
            if not isinstance(header, dict):
                raise bad("header is not a JSON object")
            metadata = header.pop("__metadata__", None) or {}
            data_len = size - 8 - n
            spans = []
            for name, info in header.items():
                try:
                    dtype = _NP_DTYPES[info["dtype"]]
                    shape = tuple(int(s) for s in info["shape"])
                    begin, end = (int(x) for x in info["data_offsets"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise bad(f"bad entry for {name}: {info!r}") from exc
                itemsize = _np_dtype(dtype).itemsize
                if not 0 <= begin <= end <= data_len or end - begin != math.prod(shape) * itemsize:
                    raise bad(f"{name}: offsets {begin}..{end} do not fit shape {shape} {dtype}")
                spans.append((begin, end, name, dtype, shape))
            out: dict[str, np.ndarray] = {}
            for begin, end, name, dtype, shape in sorted(spans):
                f.seek(8 + n + begin)
                arr = np.empty(shape, dtype=_np_dtype(dtype))
                if f.readinto(arr.reshape(-1).view(np.uint8).data) != end - begin:
                    raise bad(f"{name} is truncated")
                out[name] = arr
    except FileNotFoundError as exc:
        raise ModelSourceError(f"file not found: {p}") from exc
    except OSError as exc:
        raise ModelSourceError(f"cannot read {p}: {exc}") from exc
    return out, {str(k): str(v) for k, v in metadata.items()}
