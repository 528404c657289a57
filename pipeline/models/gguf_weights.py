"""Gemma 3 weights from GGUF files (llama.cpp), as Hugging Face tensors.

:func:`read_gguf` parses a GGUF header itself (0.3 s for the embedded file, where
``gguf.GGUFReader`` takes 10-30 s on its 262k-piece vocabulary) and exposes each tensor as
bytes on a memory map; ``gguf.quants.dequantize`` turns them into float32.
:func:`gemma3_arch` reads the architecture from the metadata; :func:`hf_tensors` yields every
tensor under its Hugging Face ``Gemma3ForCausalLM`` name, in Hugging Face layout and norm
convention, ready for ``pipeline.export.hf_checkpoint.keras_weights_from_hf`` (the one
HF <-> keras-hub mapping).

GGUF -> Hugging Face (research/keras_gemma3_gguf.md §6; GGUF numpy shapes already equal
Hugging Face's ``[out, in]``, and Q/K are not permuted: llama.cpp uses NEOX RoPE for Gemma)::

    token_embd                model.embed_tokens            output_norm     model.norm
    blk.i.attn_norm           layers.i.input_layernorm      blk.i.attn_q    self_attn.q_proj
    blk.i.post_attention_norm post_attention_layernorm      blk.i.attn_k    self_attn.k_proj
    blk.i.ffn_norm            pre_feedforward_layernorm     blk.i.attn_v    self_attn.v_proj
    blk.i.post_ffw_norm       post_feedforward_layernorm    blk.i.attn_output self_attn.o_proj
    blk.i.attn_q_norm         self_attn.q_norm              blk.i.ffn_gate  mlp.gate_proj
    blk.i.attn_k_norm         self_attn.k_norm              blk.i.ffn_up    mlp.up_proj
                                                            blk.i.ffn_down  mlp.down_proj

Norms: Hugging Face (and keras-hub) apply ``x * (1 + w)``; llama.cpp stores ``w + 1``, so
every GGUF norm gets ``- 1``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import ModelSourceError
from pipeline.models.config import GLOBAL_ROPE_WAVELENGTH, GemmaArch, named_arch

GGUF_MAGIC = b"GGUF"
_HEADER_HINT = "Pass a Gemma 3 .gguf file (llama.cpp format), or use the embedded model."

# GGUF metadata value types -> struct format (scalars).
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_ARRAY_DTYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


class GGUFTensor(NamedTuple):
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    """numpy order (the reverse of ggml's ``ne``): ``[out, in]`` for a matrix."""
    offset: int
    """Absolute byte offset of the data in the file."""
    n_bytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF: metadata, tensor index, and a read-only memory map of the file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    _map: mmap.mmap = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 view on the memory map (no copy)."""
        t = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.n_bytes, offset=t.offset)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a float32 array in numpy (``[out, in]``) shape."""
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize, quant_shape_to_byte_shape

        t = self.tensors[name]
        try:
            qtype = GGMLQuantizationType(t.ggml_type)
        except ValueError as exc:
            raise self.error(f"tensor {name} has unknown ggml type {t.ggml_type}") from exc
        data = self.raw(name).reshape(quant_shape_to_byte_shape(t.shape, qtype))
        try:
            out = dequantize(data, qtype)
        except NotImplementedError as exc:
            raise self.error(
                f"tensor {name} uses {qtype.name}, which gguf-py cannot dequantize",
                hint="Use a GGUF with a common quantization (F32, F16, BF16, Q8_0, Q4_K_M, ...).",
            ) from exc
        return np.asarray(out, dtype=np.float32).reshape(t.shape)

    def error(self, what: str, *, hint: str = _HEADER_HINT) -> ModelSourceError:
        return ModelSourceError(f"{self.path}: {what}", hint=hint)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file (versions 2 and 3, little-endian).

    Raises :class:`ModelSourceError` for a missing file, a file that is not GGUF, or a
    truncated or damaged one (a tensor that runs past the end of the file).
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"GGUF file not found: {path}", hint=_HEADER_HINT)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[:4] != GGUF_MAGIC:
                raise ModelSourceError(
                    f"{path} is not a GGUF file (it does not start with 'GGUF')",
                    hint=_HEADER_HINT,
                )
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ModelSourceError(f"Cannot read {path}: {exc}", hint=_HEADER_HINT) from exc
    size = len(buf)
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        big = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise ModelSourceError(
            f"{path}: unsupported GGUF version {version}{big}", hint=_HEADER_HINT
        )
    reader = _Reader(buf, 8)
    try:
        n_tensors, n_kv = reader.u64(), reader.u64()
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.u32())
        infos = []
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.u32()
            if n_dims > 8:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = [reader.u64() for _ in range(n_dims)]
            infos.append((name, dims, reader.u32(), reader.u64()))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelSourceError(
            f"{path}: damaged or truncated GGUF header ({exc})", hint=_HEADER_HINT
        ) from exc
    alignment = int(metadata.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelSourceError(f"{path}: bad general.alignment {alignment}", hint=_HEADER_HINT)
    data_start = -(-reader.offset // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, dims, raw_type, rel in infos:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError) as exc:
            raise ModelSourceError(
                f"{path}: tensor {name} has unknown ggml type {raw_type}", hint=_HEADER_HINT
            ) from exc
        n_elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if dims and dims[0] % block:
            raise ModelSourceError(
                f"{path}: tensor {name} rows ({dims[0]}) are not a multiple of the "
                f"{block}-element block",
                hint=_HEADER_HINT,
            )
        n_bytes = n_elements // block * type_size
        offset = data_start + rel
        if offset + n_bytes > size:
            raise ModelSourceError(
                f"{path}: truncated GGUF (tensor {name} needs bytes up to {offset + n_bytes:,}, "
                f"the file has {size:,})",
                hint="The file is incomplete: download or copy it again.",
            )
        if name in tensors:
            raise ModelSourceError(f"{path}: tensor {name} appears twice", hint=_HEADER_HINT)
        tensors[name] = GGUFTensor(name, raw_type, tuple(reversed(dims)), offset, n_bytes)
    return GGUFFile(path, version, metadata, tensors, buf)


class _Reader:
    """Sequential little-endian reads from a buffer."""

    def __init__(self, buf: mmap.mmap, offset: int) -> None:
        self.buf = buf
        self.offset = offset
        self.size = len(buf)

    def _take(self, n: int) -> int:
        start = self.offset
        if start + n > self.size:
            raise ValueError(f"unexpected end of file at byte {start:,}")
        self.offset = start + n
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self._take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self._take(8))[0]

    def string(self) -> str:
        n = self.u64()
        start = self._take(n)
        raw = self.buf[start : start + n]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Any:
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            return struct.unpack_from(fmt, self.buf, self._take(struct.calcsize(fmt)))[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            dtype = _ARRAY_DTYPES.get(item_type)
            if dtype is None:
                raise ValueError(f"unsupported array item type {item_type}")
            itemsize = np.dtype(dtype).itemsize
            start = self._take(count * itemsize)
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).tolist()
        raise ValueError(f"unknown metadata value type {vtype}")


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class GGUFInfo:
    """What the UI says about a GGUF: its name, size label, quantization, variant."""

    name: str
    size_label: str
    file_type: str
    instruct: bool


def gemma3_arch(gguf: GGUFFile) -> GemmaArch:
    """The :class:`GemmaArch` of a Gemma 3 GGUF, from its metadata.

    Raises :class:`ModelSourceError` naming ``general.architecture`` when it is not
    ``gemma3``, or naming the key that this trainer cannot follow (RoPE base or scaling,
    a missing key, a non-Gemma-3 layer pattern).
    """
    arch = gguf.get("general.architecture")
    if arch != "gemma3":
        raise ModelSourceError(
            f"{gguf.path} is a GGUF of architecture {arch!r} (general.architecture), "
            "not Gemma 3 ('gemma3')",
            hint="Only Gemma 3 text models can be fine-tuned here: pass a Gemma 3 .gguf "
            "(e.g. gemma-3-270m or gemma-3-1b), or use the embedded model.",
        )

    def need(key: str) -> Any:
        value = gguf.get(f"gemma3.{key}")
        if value is None:
            raise gguf.error(f"metadata key gemma3.{key} is missing")
        if isinstance(value, list):
            raise gguf.error(f"gemma3.{key} is a per-layer list, which is not supported")
        return value

    head_dim = int(need("attention.key_length"))
    value_dim = int(gguf.get("gemma3.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise gguf.error(f"key_length {head_dim} != value_length {value_dim}")
    base = float(need("rope.freq_base"))
    if abs(base - GLOBAL_ROPE_WAVELENGTH) > 1.0:
        raise gguf.error(
            f"gemma3.rope.freq_base is {base:g}; keras-hub's Gemma 3 hard-codes 1e6",
            hint="This GGUF is not a standard Gemma 3; use an unmodified Gemma 3 GGUF.",
        )
    factor = gguf.get("gemma3.rope.scaling.factor")
    scaling = gguf.get("gemma3.rope.scaling.type", "none")
    if (factor is not None and float(factor) != 1.0) or scaling not in ("none", "linear"):
        raise gguf.error(
            f"RoPE scaling {scaling} x{factor} (a Gemma 3 4B or larger): the training forward "
            "implements Gemma 3 without RoPE scaling only (270M, 1B)",
            hint="Use a Gemma 3 270M or 1B GGUF.",
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if gguf.get(f"gemma3.{key}") not in (None, 0, 0.0):
            raise gguf.error(f"gemma3.{key} is set; Gemma 3 has no soft-capping")
    embed = gguf.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise gguf.error("tensor token_embd.weight is missing")
    found = GemmaArch(
        name="custom",
        vocabulary_size=int(embed.shape[0]),
        num_layers=int(need("block_count")),
        hidden_dim=int(need("embedding_length")),
        intermediate_dim=int(need("feed_forward_length")),
        num_query_heads=int(need("attention.head_count")),
        num_key_value_heads=int(need("attention.head_count_kv")),
        head_dim=head_dim,
        sliding_window_size=int(need("attention.sliding_window")),
        # stored as float32: 1e-6 reads back as 9.99999997e-07; keep the shortest decimal
        layer_norm_epsilon=float(str(np.float32(need("attention.layer_norm_rms_epsilon")))),
    )
    if embed.shape[1] != found.hidden_dim:
        raise gguf.error(
            f"token_embd.weight is {list(embed.shape)}, expected [V, {found.hidden_dim}]"
        )
    pattern = gguf.get("gemma3.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        want = [found.is_sliding(i) for i in range(found.num_layers)]
        if [bool(p) for p in pattern] != want:
            raise gguf.error(
                "the sliding-window layer pattern is not Gemma 3's (5 local, 1 global)"
            )
    elif pattern is not None and int(pattern) != 6:
        raise gguf.error(f"sliding_window_pattern {pattern} is not Gemma 3's 6")
    return named_arch(found)


def gguf_info(gguf: GGUFFile) -> GGUFInfo:
    """Name, size label, quantization and whether the GGUF looks instruction-tuned."""
    from gguf.constants import LlamaFileType

    name = str(gguf.get("general.name") or gguf.path.stem)
    file_type = gguf.get("general.file_type")
    try:
        ftype = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        ftype = "unknown quantization"
    words = " ".join(
        str(gguf.get(k) or "") for k in ("general.name", "general.finetune", "general.basename")
    ).lower()
    words = f"{words} {gguf.path.stem.lower()}".replace("_", "-")
    instruct = bool(gguf.get("tokenizer.chat_template")) or any(
        f"-{tag}" in words or f" {tag}" in words for tag in ("it", "instruct")
    )
    return GGUFInfo(name, str(gguf.get("general.size_label") or ""), ftype, instruct)


# --------------------------------------------------------------------------- mapping


_LAYER_NAMES = {
    # hf suffix under model.layers.i. -> (gguf suffix under blk.i., is a norm)
    "input_layernorm.weight": ("attn_norm.weight", True),
    "post_attention_layernorm.weight": ("post_attention_norm.weight", True),
    "pre_feedforward_layernorm.weight": ("ffn_norm.weight", True),
    "post_feedforward_layernorm.weight": ("post_ffw_norm.weight", True),
    "self_attn.q_norm.weight": ("attn_q_norm.weight", True),
    "self_attn.k_norm.weight": ("attn_k_norm.weight", True),
    "self_attn.q_proj.weight": ("attn_q.weight", False),
    "self_attn.k_proj.weight": ("attn_k.weight", False),
    "self_attn.v_proj.weight": ("attn_v.weight", False),
    "self_attn.o_proj.weight": ("attn_output.weight", False),
    "mlp.gate_proj.weight": ("ffn_gate.weight", False),
    "mlp.up_proj.weight": ("ffn_up.weight", False),
    "mlp.down_proj.weight": ("ffn_down.weight", False),
}


def hf_shapes(arch: GemmaArch) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor of a Gemma 3 text model (``model.`` prefix) and its shape."""
    d, f, hd = arch.hidden_dim, arch.intermediate_dim, arch.head_dim
    q, kv = arch.q_dim, arch.kv_dim
    per_layer = {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "pre_feedforward_layernorm.weight": (d,),
        "post_feedforward_layernorm.weight": (d,),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (arch.vocabulary_size, d)}
    for i in range(arch.num_layers):
        for suffix, shape in per_layer.items():
            shapes[f"model.layers.{i}.{suffix}"] = shape
    shapes["model.norm.weight"] = (d,)
    return shapes


def gguf_names(arch: GemmaArch) -> dict[str, tuple[str, bool]]:
    """Hugging Face name -> (GGUF name, is a norm) for every tensor of ``arch``."""
    names = {
        "model.embed_tokens.weight": ("token_embd.weight", False),
    }
    for i in range(arch.num_layers):
        for hf, (gg, norm) in _LAYER_NAMES.items():
            names[f"model.layers.{i}.{hf}"] = (f"blk.{i}.{gg}", norm)
    names["model.norm.weight"] = ("output_norm.weight", True)
    return names


def check_gguf_tensors(gguf: GGUFFile, arch: GemmaArch) -> None:
    """Every GGUF tensor is one we map (``output.weight`` only if it is the tied embedding),
    and every mapped tensor is there with the expected shape."""
    names = gguf_names(arch)
    shapes = hf_shapes(arch)
    expected = {gg: shapes[hf] for hf, (gg, _) in names.items()}
    missing = sorted(set(expected) - set(gguf.tensors))
    extra = sorted(set(gguf.tensors) - set(expected) - {"output.weight"})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        if extra:
            parts.append(f"unexpected tensors {_few(extra)}")
        raise gguf.error(
            "not a plain Gemma 3 text model: " + "; ".join(parts),
            hint="Use a Gemma 3 text GGUF converted by llama.cpp (convert_hf_to_gguf.py).",
        )
    for gg, shape in expected.items():
        if gguf.tensors[gg].shape != shape:
            raise gguf.error(
                f"tensor {gg} has shape {list(gguf.tensors[gg].shape)}, expected {list(shape)}"
            )
    out = gguf.tensors.get("output.weight")
    if out is not None and out.shape != shapes["model.embed_tokens.weight"]:
        raise gguf.error(f"output.weight has shape {list(out.shape)}, expected the embedding's")


def hf_tensors(gguf: GGUFFile, arch: GemmaArch) -> Iterator[tuple[str, np.ndarray]]:
    """Dequantize every tensor; yield ``(hf_name, float32 array)`` in Hugging Face layout and
    norm convention (GGUF norms minus 1). Call :func:`check_gguf_tensors` first.

    A separate ``output.weight`` must equal the embedding (Gemma 3 ties them)."""
    embed: np.ndarray | None = None
    for hf, (gg, norm) in gguf_names(arch).items():
        value = gguf.dequantize(gg)
        if norm:
            value = value - np.float32(1.0)
        if gg == "token_embd.weight" and "output.weight" in gguf.tensors:
            embed = value
        yield hf, value
    if embed is not None:
        head = gguf.dequantize("output.weight")
        if not np.allclose(head, embed, atol=1e-2):
            raise gguf.error(
                "output.weight differs from token_embd.weight: an untied LM head, which "
                "keras-hub's Gemma 3 (tied embeddings) cannot hold"
            )


def _few(names: list[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
