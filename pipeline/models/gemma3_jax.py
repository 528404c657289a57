"""A functional Gemma 3 text forward in JAX over keras-hub's weights, for training.

keras-hub's ``Gemma3Backbone`` cannot take per-token positions or segment ids, hands cuDNN a
dense ``[B, S, S]`` mask (so no causal or sliding-window tile is skipped) and merges LoRA into
each kernel (so the backward pass computes a full weight gradient). This module computes
the same function (tests prove it against keras-hub on the tiny and 270M models) with:

- ``positions`` and ``segment_ids`` per token, so packed examples restart RoPE at 0 and never
  attend across examples;
- LoRA as a separate ``(x @ A) @ B`` path over each target's flattened matrix (the adapter
  layout of :mod:`pipeline.models.lora`);
- attention through ``jax.nn.dot_product_attention`` with ``is_causal`` and a local window on
  cuDNN when rows are not packed, and an explicit masked softmax otherwise;
- optional rematerialisation per decoder block.

The frozen weights are a pytree of the keras variables' own arrays in keras layouts (no copy):
``{"embed": [V, D], "final_norm": [D], "layers": [{...}]}`` with per-layer keys
``pre_attn_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm, q_norm, k_norm`` (RMSNorm
scales, applied as ``x * (1 + scale)``), ``q [N, D, Hd]``, ``k``/``v [K, D, Hd]``,
``o [N, Hd, D]``, ``gate``/``up [D, F]`` and ``down [F, D]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pipeline.models.config import GemmaArch

if TYPE_CHECKING:
    import jax

AttentionImpl = Literal["xla", "cudnn"]

KERAS_LAYER_PATHS = {  # our name -> the keras-hub variable path in a block
    "pre_attn_norm": "pre_attention_norm/scale",
    "post_attn_norm": "post_attention_norm/scale",
    "pre_ffw_norm": "pre_ffw_norm/scale",
    "post_ffw_norm": "post_ffw_norm/scale",
    "q_norm": "attention/query_norm/scale",
    "k_norm": "attention/key_norm/scale",
    "q": "attention/query/kernel",
    "k": "attention/key/kernel",
    "v": "attention/value/kernel",
    "o": "attention/attention_output/kernel",
    "gate": "ffw_gating/kernel",
    "up": "ffw_gating_2/kernel",
    "down": "ffw_linear/kernel",
}
_NEG_INF = -1e30


def params_from_backbone(backbone: Any) -> dict[str, Any]:
    """The frozen-weight pytree of a keras-hub ``Gemma3Backbone`` (its arrays, not copies).

    Raises ``ValueError`` when LoRA is enabled on the keras layers (their kernels would not be
    the base weights) or a variable is missing.
    """
    by_path = {v.path: v for v in backbone.weights}
    if any("lora" in p for p in by_path):
        raise ValueError("keras LoRA is enabled on this backbone; use a plain backbone")
    arch_layers = int(backbone.get_config()["num_layers"])

    def get(path: str) -> Any:
        if path not in by_path:
            raise ValueError(f"backbone has no variable {path!r}")
        return by_path[path].value

    layers = [
        {key: get(f"decoder_block_{i}/{path}") for key, path in KERAS_LAYER_PATHS.items()}
        for i in range(arch_layers)
    ]
    return {
        "embed": get("token_embedding/embeddings"),
        "final_norm": get("final_normalization/scale"),
        "layers": layers,
    }


def random_params(arch: GemmaArch, dtype: str = "bfloat16", seed: int = 0) -> dict[str, Any]:
    """Random frozen weights of ``arch`` made directly on the device (for benchmarks: the
    compute is that of the real model)."""
    import jax
    import jax.numpy as jnp

    d, f, n, kv, hd = (
        arch.hidden_dim,
        arch.intermediate_dim,
        arch.num_query_heads,
        arch.num_key_value_heads,
        arch.head_dim,
    )
    shapes = {
        "pre_attn_norm": (d,),
        "post_attn_norm": (d,),
        "pre_ffw_norm": (d,),
        "post_ffw_norm": (d,),
        "q_norm": (hd,),
        "k_norm": (hd,),
        "q": (n, d, hd),
        "k": (kv, d, hd),
        "v": (kv, d, hd),
        "o": (n, hd, d),
        "gate": (d, f),
        "up": (d, f),
        "down": (f, d),
    }
    key = jax.random.PRNGKey(seed)

    def make(k: Any, shape: tuple[int, ...]) -> Any:
        if len(shape) == 1:
            return jnp.zeros(shape, dtype)
        fan_in = shape[-2] if len(shape) == 2 else shape[1]
        return (jax.random.normal(k, shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)

    layers = []
    for _ in range(arch.num_layers):
        key, *subkeys = jax.random.split(key, len(shapes) + 1)
        pairs = zip(subkeys, shapes.items(), strict=True)
        layers.append({name: make(sk, shape) for sk, (name, shape) in pairs})
    key, sub = jax.random.split(key)
    embed = (jax.random.normal(sub, (arch.vocabulary_size, d), jnp.float32) * 0.02).astype(dtype)
    return {"embed": embed, "final_norm": jnp.zeros((d,), dtype), "layers": layers}


def default_attention_impl() -> AttentionImpl:
    """cuDNN flash attention on an NVIDIA GPU, XLA elsewhere."""
    import jax

    return "cudnn" if jax.default_backend() == "gpu" else "xla"


# --------------------------------------------------------------------------- building blocks


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    import jax.numpy as jnp

    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax_rsqrt(var + eps) * (1.0 + scale.astype(jnp.float32))
    return y.astype(x.dtype)


def jax_rsqrt(x: jax.Array) -> jax.Array:
    import jax

    return jax.lax.rsqrt(x)


def _rope(x: jax.Array, positions: jax.Array, wavelength: float) -> jax.Array:
    """Rotate ``x [B, T, H, Hd]`` by ``positions [B, T]`` (keras-hub's half-split RoPE)."""
    import jax.numpy as jnp

    hd = x.shape[-1]
    inv_freq = wavelength ** (-(jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    freq = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Hd/2]
    emb = jnp.concatenate([freq, freq], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def _lora(
    x: jax.Array, adapter_layer: Mapping[str, Any] | None, target: str, scale: float
) -> jax.Array | None:
    """``scale * (x @ A) @ B`` for ``target``, or None when it has no adapter."""
    if adapter_layer is None or target not in adapter_layer:
        return None
    a = adapter_layer[target]["a"].astype(x.dtype)
    b = adapter_layer[target]["b"].astype(x.dtype)
    return ((x @ a) @ b) * scale


def _attention_mask(
    positions_q: jax.Array, segment_ids: jax.Array, sliding_window: int | None
) -> jax.Array:
    """``[B, T, T]`` bool: same non-padding segment, causal, and inside the window.

    Causality and the window are measured on row indices (which, inside one segment, differ
    from the positions by a constant)."""
    import jax.numpy as jnp

    t = segment_ids.shape[1]
    idx = jnp.arange(t)
    causal = idx[:, None] >= idx[None, :]
    if sliding_window is not None:
        causal = causal & (idx[:, None] - idx[None, :] < sliding_window)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    del positions_q
    return same & causal[None]


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    positions: jax.Array,
    segment_ids: jax.Array | None,
    sliding_window: int | None,
    impl: AttentionImpl,
) -> jax.Array:
    """Grouped-query attention; ``q [B,T,N,Hd]``, ``k``/``v [B,T,K,Hd]`` -> ``[B,T,N,Hd]``."""
    import jax
    import jax.numpy as jnp

    b, t, n, hd = q.shape
    kv = k.shape[2]
    scale = 1.0 / math.sqrt(hd)
    if impl == "cudnn" and segment_ids is None:
        window = None if sliding_window is None else (sliding_window - 1, 0)
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=True,
            local_window_size=window,
            implementation="cudnn",
        )
    seg = segment_ids if segment_ids is not None else jnp.ones((b, t), jnp.int32)
    mask = _attention_mask(positions, seg, sliding_window)  # [B, T, S]
    if impl == "cudnn":
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn"
        )
    g = n // kv
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, hd)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k).astype(jnp.float32)
    logits = jnp.where(mask[:, None, None], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, hd)


def _block(
    x: jax.Array,
    w: Mapping[str, Any],
    lw: Mapping[str, Any] | None,
    *,
    layer: int,
    arch: GemmaArch,
    lora_scale: float,
    positions: jax.Array,
    segment_ids: jax.Array | None,
    impl: AttentionImpl,
) -> jax.Array:
    eps = arch.layer_norm_epsilon
    q, k, v = attention_inputs(
        x, w, lw, layer=layer, arch=arch, lora_scale=lora_scale, positions=positions
    )
    window = arch.sliding_window_size if arch.is_sliding(layer) else None
    attn = _attend(
        q, k, v, positions=positions, segment_ids=segment_ids, sliding_window=window, impl=impl
    )
    return finish_block(x, attn, w, lw, lora_scale=lora_scale, eps=eps)


def attention_inputs(
    x: jax.Array,
    w: Mapping[str, Any],
    lw: Mapping[str, Any] | None,
    *,
    layer: int,
    arch: GemmaArch,
    lora_scale: float,
    positions: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The queries, keys and values of decoder block ``layer`` for ``x [B, T, D]``: the
    pre-attention norm, the projections (and their LoRA), q/k norms, and RoPE at
    ``positions [B, T]``."""
    eps = arch.layer_norm_epsilon
    h = _rms_norm(x, w["pre_attn_norm"], eps)
    q = _rms_norm(head_projection(h, w, lw, "q", lora_scale), w["q_norm"], eps)
    k = _rms_norm(head_projection(h, w, lw, "k", lora_scale), w["k_norm"], eps)
    v = head_projection(h, w, lw, "v", lora_scale)
    wavelength = arch.rope_wavelength(layer)
    return _rope(q, positions, wavelength), _rope(k, positions, wavelength), v


def head_projection(
    h: jax.Array, w: Mapping[str, Any], lw: Mapping[str, Any] | None, name: str, scale: float
) -> jax.Array:
    """``h [B, T, D]`` through the ``q``, ``k`` or ``v`` kernel ``[heads, D, Hd]`` and its
    LoRA -> ``[B, T, heads, Hd]``."""
    import jax.numpy as jnp

    y = jnp.einsum("btd,ndh->btnh", h, w[name].astype(h.dtype))
    extra = _lora(h, lw, name, scale)
    if extra is not None:
        y = y + extra.reshape(y.shape)
    return y


def finish_block(
    x: jax.Array,
    attn: jax.Array,
    w: Mapping[str, Any],
    lw: Mapping[str, Any] | None,
    *,
    lora_scale: float,
    eps: float,
) -> jax.Array:
    """The rest of a decoder block after attention: the output projection (and its LoRA),
    the residual, then the gated feed-forward with its residual. ``attn [B, T, N, Hd]``."""
    import jax

    b, t, n, hd = attn.shape
    o = jax.numpy.einsum("btnh,nhd->btd", attn, w["o"].astype(x.dtype))
    extra = _lora(attn.reshape(b, t, n * hd), lw, "o", lora_scale)
    if extra is not None:
        o = o + extra
    x = x + _rms_norm(o, w["post_attn_norm"], eps)
    h = _rms_norm(x, w["pre_ffw_norm"], eps)
    gate = _linear(h, w, lw, "gate", lora_scale)
    up = _linear(h, w, lw, "up", lora_scale)
    act = jax.nn.gelu(gate, approximate=True) * up
    down = _linear(act, w, lw, "down", lora_scale)
    return x + _rms_norm(down, w["post_ffw_norm"], eps)


def _linear(
    x: jax.Array, w: Mapping[str, Any], lw: Mapping[str, Any] | None, name: str, scale: float
) -> jax.Array:
    y = x @ w[name].astype(x.dtype)
    extra = _lora(x, lw, name, scale)
    return y if extra is None else y + extra


def hidden_states(
    params: Mapping[str, Any],
    adapter: Mapping[str, Any] | None,
    token_ids: jax.Array,
    *,
    arch: GemmaArch,
    lora_scale: float = 1.0,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    impl: AttentionImpl = "xla",
    remat: bool | str = False,
    dtype: str | None = None,
) -> jax.Array:
    """Final normalised hidden states ``[B, T, D]`` (keras-hub's backbone output).

    ``segment_ids`` None means one example per row with no padding inside it that matters
    (padding at the end only affects padded positions). ``dtype`` is the compute dtype
    (default: the embedding's). ``remat``: False keeps every activation the backward pass
    needs; True (or "full") recomputes each decoder block from its input; "dots" keeps the
    matmul outputs and recomputes the elementwise work (norms, RoPE, GELU)."""
    import jax
    import jax.numpy as jnp

    embed = params["embed"]
    dt = jnp.dtype(dtype) if dtype is not None else embed.dtype
    b, t = token_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x = jnp.take(embed, token_ids, axis=0).astype(dt)
    x = x * jnp.asarray(math.sqrt(arch.hidden_dim), dt)
    layers_adapter = adapter["layers"] if adapter is not None else None
    for i, w in enumerate(params["layers"]):
        lw = layers_adapter[i] if layers_adapter is not None else None

        def run(x: jax.Array, w: Any, lw: Any, positions: jax.Array, seg: Any, i: int = i) -> Any:
            return _block(
                x,
                w,
                lw,
                layer=i,
                arch=arch,
                lora_scale=lora_scale,
                positions=positions,
                segment_ids=seg,
                impl=impl,
            )

        if remat == "dots":
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            run = jax.checkpoint(run, policy=policy)  # type: ignore[assignment]
        elif remat:
            run = jax.checkpoint(run)  # type: ignore[assignment]
        x = run(x, w, lw, positions, segment_ids)
    return _rms_norm(x, params["final_norm"], arch.layer_norm_epsilon)


def logits(
    params: Mapping[str, Any],
    adapter: Mapping[str, Any] | None,
    token_ids: jax.Array,
    **kwargs: Any,
) -> jax.Array:
    """Full float32 logits ``[B, T, V]`` (tests and short prompts only: V is 262,144)."""
    import jax.numpy as jnp

    h = hidden_states(params, adapter, token_ids, **kwargs)
    return jnp.einsum(
        "btd,vd->btv", h, params["embed"].astype(h.dtype), preferred_element_type=jnp.float32
    )
