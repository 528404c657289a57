"""Gemma 3 text architectures: the shapes the loaders, the JAX forward and LoRA agree on.

The 1B and 270M numbers are Google's (research/keras_gemma3_gguf.md §2; parameter counts
999,885,952 and 268,098,176 match keras-hub's preset metadata). ``tiny`` keeps the real
262,144-token vocabulary so the real tokenizer and data pipeline work with it, and has six
layers so that one global (full-attention) layer is exercised beside five sliding ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

LOCAL_ROPE_WAVELENGTH = 10_000.0
GLOBAL_ROPE_WAVELENGTH = 1_000_000.0
SLIDING_PATTERN = 6
"""Layer i uses sliding-window attention iff ``i % 6 < 5`` (5 local : 1 global)."""


@dataclass(frozen=True)
class GemmaArch:
    """The shape of a Gemma 3 text model (what ``Gemma3Backbone`` needs, text-only)."""

    name: str
    vocabulary_size: int
    num_layers: int
    hidden_dim: int
    intermediate_dim: int
    num_query_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window_size: int
    layer_norm_epsilon: float = 1e-6

    def is_sliding(self, layer: int) -> bool:
        return layer % SLIDING_PATTERN < SLIDING_PATTERN - 1

    def rope_wavelength(self, layer: int) -> float:
        return LOCAL_ROPE_WAVELENGTH if self.is_sliding(layer) else GLOBAL_ROPE_WAVELENGTH

    @property
    def q_dim(self) -> int:
        return self.num_query_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def parameter_count(self) -> int:
        """All weights, the tied embedding counted once."""
        d, f, hd = self.hidden_dim, self.intermediate_dim, self.head_dim
        attn = d * self.q_dim + 2 * d * self.kv_dim + self.q_dim * d + 2 * hd
        block = attn + 3 * d * f + 4 * d
        return self.vocabulary_size * d + self.num_layers * block + d

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``keras_hub.models.Gemma3Backbone`` for this text model."""
        return {
            "vocabulary_size": self.vocabulary_size,
            "image_size": 896,
            "num_layers": self.num_layers,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "head_dim": self.head_dim,
            "query_head_dim_normalize": True,
            "use_query_key_norm": True,
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "attention_logit_soft_cap": None,
            "final_logit_soft_cap": None,
            "use_sliding_window_attention": True,
            "sliding_window_size": self.sliding_window_size,
            "local_rope_scaling_factor": 1.0,
            "global_rope_scaling_factor": 1.0,
            "vision_encoder": None,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": 0,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmaArch:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def same_shape(self, other: GemmaArch) -> bool:
        """Equal in every dimension (the name may differ: "custom" vs "gemma3_270m")."""
        a, b = self.to_dict(), other.to_dict()
        del a["name"], b["name"]
        return a == b


ARCH_1B = GemmaArch(
    name="gemma3_1b",
    vocabulary_size=262144,
    num_layers=26,
    hidden_dim=1152,
    intermediate_dim=6912,
    num_query_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    sliding_window_size=512,
)
ARCH_270M = GemmaArch(
    name="gemma3_270m",
    vocabulary_size=262144,
    num_layers=18,
    hidden_dim=640,
    intermediate_dim=2048,
    num_query_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    sliding_window_size=512,
)
ARCH_TINY = GemmaArch(
    name="tiny",
    vocabulary_size=262144,
    num_layers=6,
    hidden_dim=64,
    intermediate_dim=128,
    num_query_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    sliding_window_size=16,
)
KNOWN_ARCHS = {a.name: a for a in (ARCH_1B, ARCH_270M, ARCH_TINY)}


def named_arch(arch: GemmaArch) -> GemmaArch:
    """``arch`` renamed after the known architecture it equals, if any."""
    for known in KNOWN_ARCHS.values():
        if known.same_shape(arch):
            return known
    return arch


def arch_of_backbone(backbone: Any) -> GemmaArch:
    """The :class:`GemmaArch` of a built keras-hub ``Gemma3Backbone``."""
    cfg = backbone.get_config()
    return named_arch(
        GemmaArch(
            name="custom",
            vocabulary_size=int(cfg["vocabulary_size"]),
            num_layers=int(cfg["num_layers"]),
            hidden_dim=int(cfg["hidden_dim"]),
            intermediate_dim=int(cfg["intermediate_dim"]),
            num_query_heads=int(cfg["num_query_heads"]),
            num_key_value_heads=int(cfg["num_key_value_heads"]),
            head_dim=int(cfg["head_dim"]),
            sliding_window_size=int(cfg["sliding_window_size"]),
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-6)),
        )
    )


def build_backbone(arch: GemmaArch, *, dtype: str = "float32", seed: int | None = None) -> Any:
    """A randomly initialised keras-hub ``Gemma3Backbone`` of ``arch`` (text only)."""
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras
    import keras_hub

    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras_hub.models.Gemma3Backbone(**arch.backbone_kwargs(), dtype=dtype)
