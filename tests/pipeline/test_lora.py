"""pipeline.models.lora: meta, init, npz and PEFT files, merging into keras-hub kernels."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ExportError, ModelSourceError
from pipeline.export.hf_checkpoint import read_safetensors, write_safetensors
from pipeline.models import lora
from pipeline.models.config import ARCH_1B, ARCH_270M, ARCH_TINY
from pipeline.models.lora import AdapterMeta

ALL = lora.TARGETS


def random_adapter(meta: AdapterMeta, seed: int = 0, b_std: float = 0.1) -> lora.Adapter:
    """init_adapter with a random (non-zero) B."""
    adapter = lora.init_adapter(meta, seed)
    rng = np.random.default_rng(seed + 1000)
    for block in adapter["layers"]:
        for ab in block.values():
            ab["b"] = rng.normal(0.0, b_std, ab["b"].shape).astype(np.float32)
    return adapter


def assert_adapters_equal(x: lora.Adapter, y: lora.Adapter) -> None:
    assert len(x["layers"]) == len(y["layers"])
    for bx, by in zip(x["layers"], y["layers"], strict=True):
        assert set(bx) == set(by)
        for t in bx:
            for k in ("a", "b"):
                assert by[t][k].dtype == np.float32
                np.testing.assert_array_equal(bx[t][k], by[t][k])


# --------------------------------------------------------------------------- meta, init


def test_meta_canonical_targets_scale_and_dict():
    meta = AdapterMeta(rank=8, alpha=16, targets=("v", "q", "down"), arch=ARCH_TINY)
    assert meta.targets == ("q", "v", "down")
    assert meta.scale == 2.0
    assert AdapterMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert meta.describe() == "rank 8, alpha 16, targets q,v,down on tiny"
    for bad in [dict(targets=("q", "x")), dict(targets=()), dict(rank=0), dict(alpha=0.0)]:
        kwargs = dict(rank=8, alpha=16.0, targets=("q",), arch=ARCH_TINY) | bad
        with pytest.raises(ValueError):
            AdapterMeta(**kwargs)  # type: ignore[arg-type]


def test_from_lora_config():
    from pipeline.profiles.schema import LoraConfig

    meta = AdapterMeta.from_lora_config(
        LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), ARCH_TINY
    )
    assert (meta.rank, meta.alpha, meta.targets, meta.arch) == (4, 8.0, ("q", "v"), ARCH_TINY)


def test_target_dims_and_parameter_count():
    assert [lora.target_dims(ARCH_270M, t) for t in ALL] == [
        (640, 1024),
        (640, 256),
        (640, 256),
        (1024, 640),
        (640, 2048),
        (640, 2048),
        (2048, 640),
    ]
    tiny = AdapterMeta(8, 16.0, ALL, ARCH_TINY)
    assert lora.trainable_parameter_count(tiny) == 6 * 8 * (128 + 96 + 96 + 128 + 3 * 192)
    sizes = sum(
        a.size
        for blk in lora.init_adapter(tiny, 0)["layers"]
        for ab in blk.values()
        for a in ab.values()
    )
    assert sizes == lora.trainable_parameter_count(tiny) == 49_152
    # 1B, rank 8 on q and v: 26 x 8 x ((1152 + 1024) + (1152 + 256))
    assert lora.trainable_parameter_count(AdapterMeta(8, 16.0, ("q", "v"), ARCH_1B)) == 745_472


def test_init_adapter_is_pefts_init_and_deterministic():
    meta = AdapterMeta(4, 8.0, ("q", "o", "down"), ARCH_TINY)
    x, y, z = lora.init_adapter(meta, 7), lora.init_adapter(meta, 7), lora.init_adapter(meta, 8)
    assert_adapters_equal(x, y)
    assert not np.array_equal(x["layers"][0]["q"]["a"], z["layers"][0]["q"]["a"])
    lora.check_adapter(x, meta)
    for block in x["layers"]:
        for target, ab in block.items():
            d_in, d_out = lora.target_dims(ARCH_TINY, target)
            assert ab["a"].shape == (d_in, 4) and ab["a"].dtype == np.float32
            assert ab["b"].shape == (4, d_out) and not ab["b"].any()
            bound = 1 / np.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on [r, in]
            assert np.abs(ab["a"]).max() <= bound
            assert np.abs(ab["a"]).max() > 0.9 * bound


def test_adapter_to_numpy_accepts_jax_arrays():
    import jax.numpy as jnp

    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    adapter = random_adapter(meta)
    as_jax = {
        "layers": [
            {t: {k: jnp.asarray(v) for k, v in ab.items()} for t, ab in b.items()}
            for b in adapter["layers"]
        ]
    }
    assert_adapters_equal(adapter, lora.adapter_to_numpy(as_jax))


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_is_exact(tmp_path: Path):
    meta = AdapterMeta(4, 8.0, ("q", "k", "up"), ARCH_TINY)
    adapter = random_adapter(meta)
    path = tmp_path / "adapter.npz"
    lora.save_npz(path, adapter, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.npz"]  # no temp left
    back, back_meta = lora.load_npz(path, expect=meta)
    assert back_meta == meta
    assert_adapters_equal(adapter, back)
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, meta as JSON bytes
        assert npz["meta"].dtype == np.uint8
        assert json.loads(bytes(npz["meta"]))["targets"] == ["q", "k", "up"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(rank=8), "adapter rank 4, model expects 8"),
        (dict(targets=("q", "v")), "adapter targets q,k,up, model expects q,v"),
        (dict(alpha=16.0), "adapter alpha 8, model expects 16"),
        (
            dict(arch=ARCH_270M),
            "adapter is for architecture tiny, model is gemma3_270m (num_layers 6 vs 18",
        ),
    ],
)
def test_npz_mismatch_names_the_difference(tmp_path: Path, change: dict, message: str):
    meta = AdapterMeta(4, 8.0, ("q", "k", "up"), ARCH_TINY)
    lora.save_npz(tmp_path / "a.npz", lora.init_adapter(meta, 0), meta)
    expect = AdapterMeta(**(dict(rank=4, alpha=8.0, targets=meta.targets, arch=ARCH_TINY) | change))
    with pytest.raises(ModelSourceError, match=r"does not fit") as info:
        lora.load_npz(tmp_path / "a.npz", expect=expect)
    assert message in str(info.value)
    assert str(tmp_path / "a.npz") in str(info.value)


def test_npz_corrupt_and_missing_files(tmp_path: Path):
    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    good = tmp_path / "good.npz"
    lora.save_npz(good, lora.init_adapter(meta, 0), meta)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-300])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all" * 10)
    no_meta = tmp_path / "no_meta.npz"
    np.savez(no_meta, x=np.zeros(3))
    flipped = tmp_path / "flipped.npz"
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside array data: the zip CRC catches it
    flipped.write_bytes(bytes(raw))
    bare_npy = tmp_path / "bare.npz"
    with open(bare_npy, "wb") as f:
        np.save(f, np.zeros(3))
    for path in (truncated, garbage, no_meta, flipped, bare_npy):
        with pytest.raises(ModelSourceError, match="cannot read adapter file") as info:
            lora.load_npz(path)
        assert str(path) in str(info.value)
    with pytest.raises(ModelSourceError, match="adapter file not found"):
        lora.load_npz(tmp_path / "missing.npz")


def test_save_rejects_wrong_shapes(tmp_path: Path):
    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    adapter = lora.init_adapter(meta, 0)
    adapter["layers"][3]["q"]["b"] = np.zeros((2, 63), np.float32)
    with pytest.raises(ModelSourceError, match=r"layer 3 q.b has shape \(2, 63\), expected"):
        lora.save_npz(tmp_path / "x.npz", adapter, meta)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- PEFT


def test_peft_round_trip_and_layout(tmp_path: Path):
    meta = AdapterMeta(4, 8.0, ALL, ARCH_TINY)
    adapter = random_adapter(meta)
    lora.save_peft(tmp_path, adapter, meta, "google/gemma-3-270m")
    back, back_meta = lora.load_peft(tmp_path, expect=meta)
    assert back_meta == meta
    assert_adapters_equal(adapter, back)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert (config["bias"], config["fan_in_fan_out"]) == ("none", False)
    assert config["base_model_name_or_path"] == "google/gemma-3-270m"
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    tensors, metadata = read_safetensors(tmp_path / "adapter_model.safetensors")
    assert metadata["format"] == "pt"
    assert len(tensors) == 6 * 7 * 2
    a = tensors["base_model.model.model.layers.2.self_attn.o_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.2.self_attn.o_proj.lora_B.weight"]
    assert a.shape == (4, 64) and b.shape == (64, 4) and a.dtype == np.float32  # [r,in] [out,r]
    np.testing.assert_array_equal(a, adapter["layers"][2]["o"]["a"].T)
    np.testing.assert_array_equal(b, adapter["layers"][2]["o"]["b"].T)
    k_b = tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]
    assert k_b.shape == (32, 4)


def _strip_our_metadata(folder: Path) -> None:
    """Make our PEFT folder look PEFT-written (no gemma_tui metadata)."""
    path = folder / "adapter_model.safetensors"
    tensors, _ = read_safetensors(path)
    write_safetensors(path, tensors, metadata={"format": "pt"})


@pytest.mark.parametrize("peft_written", [False, True])
def test_peft_mismatch_names_the_difference(tmp_path: Path, peft_written: bool):
    meta = AdapterMeta(4, 8.0, ("q", "v"), ARCH_TINY)
    lora.save_peft(tmp_path, lora.init_adapter(meta, 0), meta)
    if peft_written:
        _strip_our_metadata(tmp_path)
    with pytest.raises(ModelSourceError, match="adapter rank 4, model expects 8"):
        lora.load_peft(tmp_path, expect=AdapterMeta(8, 8.0, ("q", "v"), ARCH_TINY))
    with pytest.raises(ModelSourceError, match="adapter targets q,v, model expects q,k,v"):
        lora.load_peft(tmp_path, expect=AdapterMeta(4, 8.0, ("q", "k", "v"), ARCH_TINY))
    other = AdapterMeta(4, 8.0, ("q", "v"), ARCH_270M)
    if peft_written:  # the arch is not in the file: the layer count and shapes give it away
        with pytest.raises(ModelSourceError, match=r"covers layers 0-5, the model has 18"):
            lora.load_peft(tmp_path, expect=other)
        wide = AdapterMeta(
            4,
            8.0,
            ("q", "v"),
            ARCH_TINY.__class__(**(ARCH_TINY.to_dict() | {"name": "custom", "hidden_dim": 128})),
        )
        with pytest.raises(ModelSourceError, match=r"layer 0 q.a has shape \(64, 4\)"):
            lora.load_peft(tmp_path, expect=wide)
    else:
        with pytest.raises(ModelSourceError, match="adapter is for architecture tiny"):
            lora.load_peft(tmp_path, expect=other)


def test_peft_corrupt_and_unsupported(tmp_path: Path):
    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    lora.save_peft(tmp_path, lora.init_adapter(meta, 0), meta)
    weights = tmp_path / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-10])
    with pytest.raises(ModelSourceError, match="not a valid safetensors file") as info:
        lora.load_peft(tmp_path, expect=meta)
    assert str(weights) in str(info.value)
    weights.write_bytes(good)

    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"use_dora": True, "rank_pattern": {"q": 4}}))
    with pytest.raises(ModelSourceError, match="use_dora, rank_pattern"):
        lora.load_peft(tmp_path, expect=meta)
    config_path.write_text("{not json")
    with pytest.raises(ModelSourceError, match=r"adapter_config\.json"):
        lora.load_peft(tmp_path, expect=meta)
    config_path.unlink()
    with pytest.raises(ModelSourceError, match="adapter config not found"):
        lora.load_peft(tmp_path, expect=meta)


def test_peft_unknown_tensors_and_partial_layers(tmp_path: Path):
    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    lora.save_peft(tmp_path, lora.init_adapter(meta, 0), meta)
    path = tmp_path / "adapter_model.safetensors"
    tensors, md = read_safetensors(path)
    write_safetensors(path, tensors | {"base_model.model.lm_head.lora_A.weight": np.zeros(2)}, md)
    with pytest.raises(ModelSourceError, match=r"does not know: base_model\.model\.lm_head"):
        lora.load_peft(tmp_path, expect=meta)
    partial = {k: v for k, v in tensors.items() if ".layers.5." not in k}
    write_safetensors(path, partial, {"format": "pt"})
    with pytest.raises(ModelSourceError, match="covers layers 0-4, the model has 6"):
        lora.load_peft(tmp_path, expect=meta)


# --------------------------------------------------------------------------- merge


def test_merged_kernels_pure_function_casts_after_float32_math():
    import ml_dtypes

    meta = AdapterMeta(4, 8.0, ("q", "o", "down"), ARCH_TINY)
    adapter = random_adapter(meta)
    rng = np.random.default_rng(3)
    kernels = {}
    for i in range(6):
        kernels[f"decoder_block_{i}/attention/query/kernel"] = rng.normal(size=(2, 64, 32))
        kernels[f"decoder_block_{i}/attention/attention_output/kernel"] = rng.normal(
            size=(2, 32, 64)
        )
        kernels[f"decoder_block_{i}/ffw_linear/kernel"] = rng.normal(size=(128, 64))
    kernels = {k: v.astype(ml_dtypes.bfloat16) for k, v in kernels.items()}
    merged = lora.merged_kernels(kernels, adapter, meta)
    assert set(merged) == set(kernels)
    q = kernels["decoder_block_1/attention/query/kernel"].astype(np.float32)
    ab = adapter["layers"][1]["q"]
    delta = (2.0 * ab["a"] @ ab["b"]).reshape(64, 2, 32).transpose(1, 0, 2)
    want = (q + delta).astype(ml_dtypes.bfloat16)
    got = merged["decoder_block_1/attention/query/kernel"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    with pytest.raises(ExportError, match="no kernel decoder_block_0/ffw_gating/kernel"):
        lora.merged_kernels(kernels, adapter, AdapterMeta(4, 8.0, ("gate",), ARCH_TINY))


def randomize_weights(backbone, seed: int = 0) -> None:
    """Give a fresh backbone O(1) logits: norms N(0, 0.1), embedding N(0, 1), kernels
    N(0, 1/fan_in) (keras-hub's init gives logits of about 0.08, too small to compare)."""
    rng = np.random.default_rng(seed)
    for v in backbone.weights:
        shape = tuple(v.shape)
        if v.path.endswith("scale"):
            std = 0.1
        elif v.path.endswith("embeddings"):
            std = 1.0
        elif v.path.endswith(("query/kernel", "key/kernel", "value/kernel")):
            std = shape[1] ** -0.5  # (heads, D, Hd)
        elif v.path.endswith("attention_output/kernel"):
            std = (shape[0] * shape[1]) ** -0.5  # (heads, Hd, D)
        else:
            std = shape[0] ** -0.5  # (in, out)
        v.assign(rng.normal(0.0, std, shape).astype(np.float32))


def keras_logits(backbone, ids: np.ndarray) -> np.ndarray:
    """[T, V] float32 logits of ``ids`` [1, T] (tied embedding as the LM head)."""
    h = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return np.asarray(backbone.token_embedding(h, reverse=True), dtype=np.float32)[0]


@pytest.fixture(scope="module")
def tiny_backbone():
    from pipeline.models.config import build_backbone

    backbone = build_backbone(ARCH_TINY, dtype="float32", seed=0)
    randomize_weights(backbone)
    return backbone


def test_merge_into_backbone(tiny_backbone):
    from pipeline.export.hf_checkpoint import assign_weights, backbone_weights

    backbone = tiny_backbone
    original = backbone_weights(backbone)
    ids = np.array([[2, *range(1000, 1023)]], dtype=np.int32)
    before = keras_logits(backbone, ids)
    meta = AdapterMeta(4, 8.0, ALL, ARCH_TINY)
    try:
        lora.merge_into_backbone(backbone, lora.init_adapter(meta, 0), meta)  # B = 0
        np.testing.assert_array_equal(keras_logits(backbone, ids), before)

        adapter = random_adapter(meta, b_std=0.2)
        assign_weights(backbone, original)
        lora.merge_into_backbone(backbone, adapter, meta)
        assert np.abs(keras_logits(backbone, ids) - before).max() > 0.1

        # Each merged layer computes x @ W + scale * (x @ A) @ B through keras' own equation.
        block = backbone.get_layer("decoder_block_3")
        rng = np.random.default_rng(5)
        x = rng.normal(size=(1, 5, 64)).astype(np.float32)
        xo = rng.normal(size=(1, 5, 2, 32)).astype(np.float32)
        xf = rng.normal(size=(1, 5, 128)).astype(np.float32)
        layers = {
            "q": (block.attention.query_dense, x),
            "k": (block.attention.key_dense, x),
            "v": (block.attention.value_dense, x),
            "o": (block.attention.output_dense, xo),
            "gate": (block.gating_ffw, x),
            "up": (block.gating_ffw_2, x),
            "down": (block.ffw_linear, xf),
        }
        for target, (layer, inp) in layers.items():
            path = lora.keras_kernel_path(3, target)
            assert layer.kernel.path == path
            merged_out = np.asarray(layer(inp)).reshape(5, -1)
            layer.kernel.assign(original[path])
            base_out = np.asarray(layer(inp)).reshape(5, -1)
            ab = adapter["layers"][3][target]
            direct = base_out + meta.scale * (inp.reshape(5, -1) @ ab["a"]) @ ab["b"]
            np.testing.assert_allclose(merged_out, direct, rtol=1e-5, atol=1e-5)
    finally:
        assign_weights(backbone, original)

    wrong = AdapterMeta(4, 8.0, ALL, ARCH_270M)
    with pytest.raises(ExportError, match="adapter is for architecture gemma3_270m"):
        lora.merge_into_backbone(backbone, lora.init_adapter(wrong, 0), wrong)


def test_npz_header_is_plain_zip(tmp_path: Path):
    """No pickled object arrays: every member is a .npy with a numeric dtype."""
    import zipfile

    meta = AdapterMeta(2, 4.0, ("q",), ARCH_TINY)
    lora.save_npz(tmp_path / "a.npz", lora.init_adapter(meta, 0), meta)
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        for name in z.namelist():
            head = z.read(name)[:128]
            assert head.startswith(b"\x93NUMPY")
            (hlen,) = struct.unpack("<H", head[8:10])
            assert b"'O'" not in head[10 : 10 + hlen]
