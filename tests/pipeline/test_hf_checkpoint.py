"""pipeline.export.hf_checkpoint: safetensors files, keras <-> HF names, config.json."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pipeline.errors import ModelSourceError
from pipeline.export import hf_checkpoint as hf
from pipeline.models.config import ARCH_1B, ARCH_270M, ARCH_TINY

# --------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_and_format(tmp_path: Path):
    rng = np.random.default_rng(0)
    tensors = {
        "b.f32": rng.normal(size=(3, 5)).astype(np.float32),
        "a.bf16": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
        "c.i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "d.bool": np.array([True, False]),
        "e.scalar": np.array(2.5, dtype=np.float64),
        "f.empty": np.zeros((0, 3), dtype=np.float16),
        "g.transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    }
    path = tmp_path / "x.safetensors"
    hf.write_safetensors(path, tensors, metadata={"format": "pt", "k": "v"})
    back, metadata = hf.read_safetensors(path)
    assert metadata == {"format": "pt", "k": "v"}
    assert set(back) == set(tensors)
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape
        np.testing.assert_array_equal(back[name], arr)

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0  # header padded with spaces, like the safetensors library
    header = json.loads(raw[8 : 8 + n])
    assert header["a.bf16"]["dtype"] == "BF16" and header["d.bool"]["dtype"] == "BOOL"
    offsets = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert offsets[0][0] == 0 and offsets[-1][1] == len(raw) - 8 - n
    assert all(x[1] == y[0] for x, y in itertools.pairwise(offsets))  # no holes


def test_safetensors_corrupt_files(tmp_path: Path):
    path = tmp_path / "x.safetensors"
    hf.write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    good = path.read_bytes()
    cases = {
        "short": good[:5],
        "truncated": good[:-4],
        "huge_header": struct.pack("<Q", 10**12) + good[8:],
        "bad_json": good[:8] + b"{" * (len(good) - 8),
        "bad_dtype": good.replace(b'"F32"', b'"X32"'),
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(ModelSourceError, match="not a valid safetensors file") as info:
            hf.read_safetensors(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(ModelSourceError, match="file not found"):
        hf.read_safetensors(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- names


def test_layout_functions_invert():
    rng = np.random.default_rng(0)
    for layout, shape in [("heads_in", (4, 6, 5)), ("heads_out", (4, 5, 6)), ("dense", (6, 7))]:
        kernel = rng.normal(size=shape)
        flat = hf.kernel_to_flat(kernel, layout)  # type: ignore[arg-type]
        assert flat.ndim == 2
        np.testing.assert_array_equal(hf.flat_to_kernel(flat, shape, layout), kernel)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny():
    from pipeline.models.config import build_backbone
    from tests.pipeline.test_lora import randomize_weights

    backbone = build_backbone(ARCH_TINY, dtype="float32", seed=0)
    randomize_weights(backbone, seed=1)
    return backbone


def test_names_both_ways_on_tiny(tiny):
    weights = hf.backbone_weights(tiny)
    state = hf.hf_state_from_keras(weights, ARCH_TINY)
    assert len(state) == len(weights) == 2 + 13 * 6
    assert state["model.embed_tokens.weight"].shape == (262144, 64)
    assert state["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)  # [N*Hd, D]
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert state["model.layers.0.self_attn.o_proj.weight"].shape == (64, 64)  # [D, N*Hd]
    assert state["model.layers.5.mlp.gate_proj.weight"].shape == (128, 64)  # [F, D]
    assert state["model.layers.5.mlp.down_proj.weight"].shape == (64, 128)  # [D, F]
    assert state["model.layers.5.self_attn.q_norm.weight"].shape == (32,)
    np.testing.assert_array_equal(  # norms as is: both apply x * (1 + w)
        state["model.norm.weight"], weights["final_normalization/scale"]
    )
    back = hf.keras_weights_from_hf(state, ARCH_TINY)
    assert set(back) == set(weights)
    for path, value in weights.items():
        np.testing.assert_array_equal(back[path], value)

    # HF semantics: y = x @ W.T, checked against keras' own einsum equations.
    block = tiny.get_layer("decoder_block_2")
    x = np.random.default_rng(0).normal(size=(1, 3, 64)).astype(np.float32)
    for module, layer in [
        ("self_attn.q_proj", block.attention.query_dense),
        ("self_attn.v_proj", block.attention.value_dense),
        ("mlp.up_proj", block.gating_ffw_2),
    ]:
        w = state[f"model.layers.2.{module}.weight"]
        np.testing.assert_allclose(
            np.asarray(layer(x)).reshape(3, -1), x[0] @ w.T, rtol=1e-5, atol=1e-5
        )
    heads = np.random.default_rng(1).normal(size=(1, 3, 2, 32)).astype(np.float32)
    w = state["model.layers.2.self_attn.o_proj.weight"]
    np.testing.assert_allclose(
        np.asarray(block.attention.output_dense(heads))[0],
        heads[0].reshape(3, 64) @ w.T,
        rtol=1e-5,
        atol=1e-5,
    )


def test_keras_weights_from_hf_prefixes_and_errors(tiny):
    state = hf.hf_state_from_keras(hf.backbone_weights(tiny), ARCH_TINY)
    vlm = {"model.language_model." + k.removeprefix("model."): v for k, v in state.items()}
    assert set(hf.keras_weights_from_hf(vlm, ARCH_TINY)) == set(hf.backbone_weights(tiny))
    tied = state | {"lm_head.weight": state["model.embed_tokens.weight"]}
    hf.keras_weights_from_hf(tied, ARCH_TINY)

    untied = state | {"lm_head.weight": state["model.embed_tokens.weight"] + 1}
    with pytest.raises(ModelSourceError, match="untied lm_head"):
        hf.keras_weights_from_hf(untied, ARCH_TINY)
    missing = {k: v for k, v in state.items() if "layers.3.mlp.up_proj" not in k}
    with pytest.raises(ModelSourceError, match=r"missing 1 tensors \(model\.layers\.3\.mlp"):
        hf.keras_weights_from_hf(missing, ARCH_TINY)
    with pytest.raises(ModelSourceError, match="expected"):
        hf.keras_weights_from_hf(
            state, ARCH_TINY.__class__(**(ARCH_TINY.to_dict() | {"intermediate_dim": 256}))
        )
    with pytest.raises(ModelSourceError, match=r"no embed_tokens\.weight"):
        hf.keras_weights_from_hf({"x": np.zeros(1)}, ARCH_TINY)


def test_save_and_read_checkpoint(tiny, tmp_path: Path):
    out = hf.save_hf_checkpoint(tiny, tmp_path / "ckpt", tokenizer_proto=b"sp-model-bytes")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert (out / "tokenizer.model").read_bytes() == b"sp-model-bytes"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["model_type"] == "gemma3_text"
    assert config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32"
    assert config["query_pre_attn_scalar"] == 32 and config["sliding_window"] == 16
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000.0
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
    state, arch = hf.read_hf_checkpoint(out)
    assert arch == ARCH_TINY
    back = hf.keras_weights_from_hf(state, arch)
    for path, value in hf.backbone_weights(tiny).items():
        np.testing.assert_array_equal(back[path], value)

    hf.save_hf_checkpoint(tiny, tmp_path / "no_tok")
    assert not (tmp_path / "no_tok" / "tokenizer.model").exists()


def test_bfloat16_checkpoint(tmp_path: Path):
    from pipeline.models.config import build_backbone

    backbone = build_backbone(ARCH_TINY, dtype="bfloat16", seed=0)
    hf.save_hf_checkpoint(backbone, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    state, _ = hf.read_safetensors(tmp_path / "model.safetensors")
    assert state["model.layers.0.self_attn.q_proj.weight"].dtype == ml_dtypes.bfloat16
    again = build_backbone(ARCH_TINY, dtype="bfloat16", seed=1)
    hf.assign_weights(again, hf.keras_weights_from_hf(state, ARCH_TINY))
    for x, y in zip(backbone.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(x.value), np.asarray(y.value))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("arch", [ARCH_TINY, ARCH_270M, ARCH_1B])
def test_arch_from_config_round_trip(arch):
    assert hf.arch_from_hf_config(hf.hf_config(arch, "bfloat16")) == arch


def test_arch_from_legacy_and_multimodal_configs():
    legacy = {  # transformers 4.5x google/gemma-3-270m style
        k: v
        for k, v in hf.hf_config(ARCH_270M, "bfloat16").items()
        if k not in ("rope_parameters", "layer_types")
    }
    assert hf.arch_from_hf_config(legacy) == ARCH_270M
    multimodal = {"model_type": "gemma3", "text_config": hf.hf_config(ARCH_1B, "bfloat16")}
    assert hf.arch_from_hf_config(multimodal) == ARCH_1B


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping is set"),
        ({"query_pre_attn_scalar": 168}, "query_pre_attn_scalar differs"),
        ({"rope_parameters": None, "rope_scaling": {"factor": 8.0}}, "rope scaling is set"),
        (
            {"rope_parameters": None, "rope_theta": 10_000.0},
            "rope bases 10000/10000",
        ),
        ({"layer_types": ["full_attention"] * 18}, "layer_types is not"),
        ({"model_type": "llama"}, "not Gemma 3"),
    ],
)
def test_arch_from_config_refuses_what_keras_cannot_run(change, message):
    with pytest.raises(ModelSourceError, match=message):
        hf.arch_from_hf_config(hf.hf_config(ARCH_270M, "bfloat16") | change)
