"""``load_model`` and model sources: every kind of source, the GGUF cache, bad inputs.

A tiny Gemma 3 GGUF is written here with ``gguf.GGUFWriter`` (the real 262k vocabulary
copied from the embedded file, random weights in several quantizations), and its loaded
weights are checked against the GGUF -> keras-hub mapping of research §6, written out again
independently below. Real-model correctness is tests/pipeline/test_oracle.py.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import JobCancelled, ModelSourceError
from pipeline.events import LogLine, StageDone
from pipeline.models import loader
from pipeline.models.config import ARCH_TINY, GemmaArch
from pipeline.models.sources import (
    SUPPORTED_PRESETS,
    UNSUPPORTED_PRESETS,
    ModelSource,
    check_dtype,
    parse_source,
)
from pipeline.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
TINY = ARCH_TINY


# --------------------------------------------------------------------------- sources


def test_parse_source_kinds(tmp_path: Path) -> None:
    assert parse_source("").kind == "embedded"
    assert parse_source(None).kind == "embedded"
    assert parse_source(" embedded ").kind == "embedded"
    assert parse_source("tiny") == ModelSource("tiny", "0", "tiny random Gemma 3 (seed 0)")
    assert parse_source("tiny:7").location == "7"
    hf = parse_source("hf://google/gemma-3-1b-it")
    assert (hf.kind, hf.location, hf.remote, hf.path) == (
        "hf",
        "hf://google/gemma-3-1b-it",
        True,
        None,
    )
    kaggle = parse_source("kaggle://keras/gemma3/keras/gemma3_instruct_1b/3")
    assert kaggle.kind == "preset" and kaggle.remote
    for name in SUPPORTED_PRESETS:
        assert parse_source(name) == ModelSource("preset", name, f"keras-hub preset {name}")

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(20))
    assert parse_source(str(gguf)) == ModelSource("gguf", str(gguf), "GGUF m.gguf")
    renamed = tmp_path / "model.bin"  # a GGUF without the suffix, found by its magic
    renamed.write_bytes(b"GGUF" + bytes(20))
    assert parse_source(str(renamed)).kind == "gguf"

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text('{"model_type": "gemma3_text"}')
    assert parse_source(str(hf_dir)).kind == "hf"
    assert parse_source(str(hf_dir)).path == hf_dir
    preset_dir = tmp_path / "preset"
    preset_dir.mkdir()
    (preset_dir / "config.json").write_text('{"registered_name": "keras_hub>Gemma3Backbone"}')
    src = parse_source(str(preset_dir))
    assert (src.kind, src.remote, src.path) == ("preset", False, preset_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tiny:x", "Bad tiny model seed"),
        ("hf://google", "Bad Hugging Face handle"),
        ("kaggle://keras/gemma3", "Bad Kaggle handle"),
        ("s3://bucket/model", "Unknown model source scheme"),
        ("gemma3_instruct_4b", "image+text"),
        ("gemma3_instruct_4b_text", "RoPE scaling"),
        ("embedding_gemma3_300m", "embedding model"),
        ("gemma3_instruct_2b", "not a known preset"),
        ("missing/model.gguf", "not found"),
        ("./nowhere", "not found"),
    ],
)
def test_parse_source_refuses(text: str, expected: str) -> None:
    with pytest.raises(ModelSourceError, match=re.escape(expected)) as info:
        parse_source(text)
    assert info.value.hint


def test_parse_source_refuses_files_and_folders(tmp_path: Path) -> None:
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelSourceError, match="neither a GGUF file nor a model folder"):
        parse_source(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match=re.escape("no config.json")) as info:
        parse_source(str(empty))
    assert "a.gguf" in str(info.value.hint)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text('{"architecture": "resnet"}')
    with pytest.raises(ModelSourceError, match="neither a keras-hub preset config"):
        parse_source(str(odd))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(ModelSourceError, match="Cannot read"):
        parse_source(str(broken))


def test_every_keras_hub_gemma3_preset_is_classified() -> None:
    """A new keras-hub release with new Gemma 3 presets makes this fail: classify them."""
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras_hub

    names = set(keras_hub.models.Gemma3Backbone.presets)
    assert names == set(SUPPORTED_PRESETS) | set(UNSUPPORTED_PRESETS)


def test_dtypes() -> None:
    assert check_dtype("bfloat16") == "bfloat16"
    assert check_dtype("FP32") == "float32"
    assert check_dtype("bf16") == "bfloat16"
    for bad in ("float16", "fp16", "half"):
        with pytest.raises(ModelSourceError, match="float16 is not supported") as info:
            check_dtype(bad)
        assert "bfloat16" in str(info.value.hint)
    with pytest.raises(ModelSourceError, match="Unsupported model dtype"):
        check_dtype("int8")
    with pytest.raises(ModelSourceError, match="float16"):
        loader.load_model("tiny", dtype="float16")


def test_importing_the_loader_is_cheap() -> None:
    code = (
        "import sys, pipeline.models.sources, pipeline.models.loader, "
        "pipeline.models.gguf_weights\n"
        "heavy = [m for m in ('jax', 'keras', 'keras_hub', 'gguf', 'sentencepiece', 'torch') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- helpers


def keras_weights(backbone: Any) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.value, dtype=np.float32) for v in backbone.weights}


def logits(model: Any, ids: list[int]) -> np.ndarray:
    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
    return np.asarray(model.causal_lm(x), dtype=np.float32)[0]


def stages(events: list) -> list[str]:
    return [e.stage for e in events if isinstance(e, StageDone)]


# Independent statement of research §6 (GGUF numpy arrays -> keras-hub variables).
def expected_from_gguf(arrays: dict[str, np.ndarray], arch: GemmaArch) -> dict[str, np.ndarray]:
    n, k, hd, d = arch.num_query_heads, arch.num_key_value_heads, arch.head_dim, arch.hidden_dim
    out = {
        "token_embedding/embeddings": arrays["token_embd.weight"],
        "final_normalization/scale": arrays["output_norm.weight"] - 1,
    }
    for i in range(arch.num_layers):
        b, p = f"blk.{i}.", f"decoder_block_{i}/"
        out |= {
            p + "pre_attention_norm/scale": arrays[b + "attn_norm.weight"] - 1,
            p + "post_attention_norm/scale": arrays[b + "post_attention_norm.weight"] - 1,
            p + "pre_ffw_norm/scale": arrays[b + "ffn_norm.weight"] - 1,
            p + "post_ffw_norm/scale": arrays[b + "post_ffw_norm.weight"] - 1,
            p + "attention/query_norm/scale": arrays[b + "attn_q_norm.weight"] - 1,
            p + "attention/key_norm/scale": arrays[b + "attn_k_norm.weight"] - 1,
            p + "attention/query/kernel": arrays[b + "attn_q.weight"]
            .reshape(n, hd, d)
            .transpose(0, 2, 1),
            p + "attention/key/kernel": arrays[b + "attn_k.weight"]
            .reshape(k, hd, d)
            .transpose(0, 2, 1),
            p + "attention/value/kernel": arrays[b + "attn_v.weight"]
            .reshape(k, hd, d)
            .transpose(0, 2, 1),
            p + "attention/attention_output/kernel": arrays[b + "attn_output.weight"]
            .reshape(d, n, hd)
            .transpose(1, 2, 0),
            p + "ffw_gating/kernel": arrays[b + "ffn_gate.weight"].T,
            p + "ffw_gating_2/kernel": arrays[b + "ffn_up.weight"].T,
            p + "ffw_linear/kernel": arrays[b + "ffn_down.weight"].T,
        }
    return out


def write_tiny_gguf(
    path: Path, vocab: dict[str, Any], *, seed: int = 0, arch_name: str = "gemma3"
) -> dict[str, np.ndarray]:
    """A Gemma 3 GGUF of ``ARCH_TINY`` shape; returns each tensor as the file holds it
    (dequantized, GGUF convention: norms are w + 1)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import dequantize, quantize

    a = TINY
    rng = np.random.default_rng(seed)
    qtypes = {
        "attn_q": Q.Q4_0,
        "attn_k": Q.Q5_0,
        "attn_v": Q.F16,
        "attn_output": Q.BF16,
        "ffn_gate": Q.Q8_0,
        "ffn_up": Q.Q5_1,
        "ffn_down": Q.Q4_1,
    }
    shapes = {
        "attn_q": (a.q_dim, a.hidden_dim),
        "attn_k": (a.kv_dim, a.hidden_dim),
        "attn_v": (a.kv_dim, a.hidden_dim),
        "attn_output": (a.hidden_dim, a.q_dim),
        "ffn_gate": (a.intermediate_dim, a.hidden_dim),
        "ffn_up": (a.intermediate_dim, a.hidden_dim),
        "ffn_down": (a.hidden_dim, a.intermediate_dim),
    }
    norms = {
        "attn_norm": a.hidden_dim,
        "post_attention_norm": a.hidden_dim,
        "ffn_norm": a.hidden_dim,
        "post_ffw_norm": a.hidden_dim,
        "attn_q_norm": a.head_dim,
        "attn_k_norm": a.head_dim,
    }
    tensors: list[tuple[str, np.ndarray, Any]] = [
        (
            "token_embd.weight",
            rng.normal(0, 0.05, (a.vocabulary_size, a.hidden_dim)).astype(np.float32),
            Q.Q8_0,
        )
    ]
    for i in range(a.num_layers):
        for name, shape in shapes.items():
            value = rng.normal(0, 0.05, shape).astype(np.float32)
            tensors.append((f"blk.{i}.{name}.weight", value, qtypes[name]))
        for name, size in norms.items():
            value = (1 + rng.normal(0, 0.2, size)).astype(np.float32)
            tensors.append((f"blk.{i}.{name}.weight", value, Q.F32))
    tensors.append(
        ("output_norm.weight", (1 + rng.normal(0, 0.2, a.hidden_dim)).astype(np.float32), Q.F32)
    )

    writer = GGUFWriter(str(path), arch_name)
    writer.add_name("tiny gemma3 test")
    writer.add_context_length(1024)
    writer.add_embedding_length(a.hidden_dim)
    writer.add_block_count(a.num_layers)
    writer.add_feed_forward_length(a.intermediate_dim)
    writer.add_head_count(a.num_query_heads)
    writer.add_head_count_kv(a.num_key_value_heads)
    writer.add_key_length(a.head_dim)
    writer.add_value_length(a.head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(a.sliding_window_size)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab["tokenizer.ggml.tokens"])
    writer.add_token_scores(vocab["tokenizer.ggml.scores"])
    writer.add_token_types(vocab["tokenizer.ggml.token_type"])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)
    held: dict[str, np.ndarray] = {}
    for name, value, qtype in tensors:
        if qtype == Q.F32:
            writer.add_tensor(name, value)
            held[name] = value
        else:
            data = quantize(value, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            raw = data if data.dtype == np.uint8 else data.view(np.uint8)
            held[name] = np.asarray(dequantize(raw, qtype), np.float32).reshape(value.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


@pytest.fixture(scope="session")
def embedded_vocab() -> dict[str, Any]:
    from pipeline.models.embedded import embedded_gguf_path
    from pipeline.models.gguf_weights import read_gguf

    gguf = read_gguf(embedded_gguf_path())
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    return {k: gguf.metadata[k] for k in keys}


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, embedded_vocab: dict) -> dict:
    """A tiny Gemma 3 GGUF, its tensors, and a workspace that already holds its tokenizer
    (building a tokenizer proto from a GGUF takes about a second, once)."""
    from pipeline.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("tiny_gguf")
    path = root / "tiny-gemma3.gguf"
    arrays = write_tiny_gguf(path, embedded_vocab)
    ws = Workspace(root / "ws")
    load_tokenizer(ws, gguf=path)
    return {"path": path, "arrays": arrays, "ws": ws}


def fresh_workspace(tiny: dict, tmp_path: Path) -> Workspace:
    """A new workspace with the tiny GGUF's tokenizer cache, but no converted model."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(tiny["ws"].cache_dir / "tokenizer", ws.cache_dir / "tokenizer")
    return ws


# --------------------------------------------------------------------------- GGUF


def test_gguf_reader_agrees_with_gguf_py(embedded_vocab: dict, tmp_path: Path) -> None:
    from gguf import GGUFReader

    from pipeline.models.gguf_weights import read_gguf

    path = tmp_path / "small-vocab.gguf"  # gguf-py's reader needs 10-30 s for 262k pieces
    write_tiny_gguf(path, {k: v[:300] for k, v in embedded_vocab.items()})
    ours = read_gguf(path)
    theirs = GGUFReader(path)
    assert set(ours.tensors) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert mine.ggml_type == int(t.tensor_type)
        assert mine.shape == tuple(int(x) for x in reversed(t.shape.tolist()))
        assert mine.n_bytes == t.n_bytes
        assert np.array_equal(ours.raw(t.name), np.asarray(t.data).reshape(-1).view(np.uint8))
    for key in ("gemma3.block_count", "gemma3.rope.freq_base", "tokenizer.ggml.bos_token_id"):
        assert ours.metadata[key] == theirs.fields[key].contents()
    assert (
        ours.metadata["tokenizer.ggml.tokens"][:300]
        == (theirs.fields["tokenizer.ggml.tokens"].contents()[:300])
    )


def test_gguf_loads_with_the_research_mapping(tiny_gguf: dict, tmp_path: Path) -> None:
    ws = fresh_workspace(tiny_gguf, tmp_path)
    events: list = []
    model = loader.load_model(
        str(tiny_gguf["path"]), dtype="float32", workspace=ws, on_event=events.append
    )
    assert model.arch == TINY and model.dtype == "float32"
    assert model.source.kind == "gguf"
    assert "tiny gemma3 test" in model.description and "pretrained" in model.description
    got = keras_weights(model.backbone)
    want = expected_from_gguf(tiny_gguf["arrays"], TINY)
    assert set(got) == set(want)
    for path, value in want.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    assert {"gguf", "dequantize", "cache", "weights", "model"} <= set(stages(events))
    ids = model.tokenizer.encode("<bos><start_of_turn>user\nHi<end_of_turn>\n")
    out = logits(model, ids)
    assert out.shape == (len(ids), TINY.vocabulary_size) and np.isfinite(out).all()

    bf16 = loader.load_model(str(tiny_gguf["path"]), dtype="bfloat16", workspace=ws)
    assert {v.dtype for v in bf16.backbone.weights} == {"bfloat16"}
    emb = np.asarray(bf16.backbone.get_layer("token_embedding").embeddings.value, np.float32)
    np.testing.assert_allclose(emb, want["token_embedding/embeddings"], rtol=1e-2, atol=1e-3)


def test_gguf_cache_is_reused_and_rebuilt_when_damaged(tiny_gguf: dict, tmp_path: Path) -> None:
    ws = fresh_workspace(tiny_gguf, tmp_path)
    source = str(tiny_gguf["path"])
    identity = loader.gguf_identity(tiny_gguf["path"], embedded=False)
    folder = loader.converted_path(ws, identity)

    def load() -> tuple[Any, list]:
        events: list = []
        model = loader.load_model(source, dtype="float32", workspace=ws, on_event=events.append)
        return model, events

    first, events = load()
    assert "dequantize" in stages(events)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "gemma_tui.json",
        "model.safetensors",
        "tokenizer.model",
    ]
    assert not list(folder.parent.glob(".*.tmp"))
    reference = keras_weights(first.backbone)
    marker = json.loads((folder / "gemma_tui.json").read_text())
    assert marker["identity"] == identity and marker["arch"] == TINY.to_dict()

    second, events = load()
    assert "dequantize" not in stages(events) and "cache" in stages(events)
    assert second.description == first.description
    for path, value in keras_weights(second.backbone).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)

    # A truncated weights file: detected, deleted, rebuilt.
    weights = folder / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    third, events = load()
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert any("damaged model cache" in w for w in warnings), warnings
    assert "dequantize" in stages(events)
    np.testing.assert_array_equal(
        keras_weights(third.backbone)["token_embedding/embeddings"],
        reference["token_embedding/embeddings"],
    )
    # A folder without its marker (a crash between writes cannot leave one; a user might).
    (folder / "gemma_tui.json").unlink()
    _, events = load()
    assert "dequantize" in stages(events) and (folder / "gemma_tui.json").is_file()
    # A tokenizer file that is not SentencePiece.
    (folder / "tokenizer.model").write_bytes(b"not a proto")
    _, events = load()
    assert "dequantize" in stages(events)
    # A changed source file gets a new key, so a new folder.
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_gguf["path"], copy)
    before = loader.gguf_identity(copy, embedded=False)
    os.utime(copy, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert loader.gguf_identity(copy, embedded=False) != before


def test_cancelling_a_conversion_leaves_no_cache(tiny_gguf: dict, tmp_path: Path) -> None:
    ws = fresh_workspace(tiny_gguf, tmp_path)
    calls = itertools.count()
    with pytest.raises(JobCancelled):
        loader.load_model(
            str(tiny_gguf["path"]), workspace=ws, should_stop=lambda: next(calls) >= 10
        )
    converted = ws.cache_dir / loader.CONVERTED_SUBDIR
    assert not converted.exists() or not any(converted.iterdir())
    with pytest.raises(JobCancelled):
        loader.load_model("tiny", workspace=ws, should_stop=lambda: True)


def test_bad_gguf_files(tiny_gguf: dict, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    data = tiny_gguf["path"].read_bytes()

    def fails(name: str, content: bytes, expected: str) -> ModelSourceError:
        path = tmp_path / name
        path.write_bytes(content)
        start = time.perf_counter()
        with pytest.raises(ModelSourceError, match=re.escape(expected)) as info:
            loader.load_model(str(path), workspace=ws)
        assert time.perf_counter() - start < 30
        assert info.value.hint
        return info.value

    fails("empty.gguf", b"", "not a GGUF file")
    fails("text.gguf", b"hello, I am not a model\n" * 10, "not a GGUF file")
    fails("header.gguf", data[:4096], "damaged or truncated GGUF header")
    err = fails("cut.gguf", data[: len(data) - 1000], "truncated GGUF")
    assert "download or copy it again" in str(err.hint)
    bad_version = bytearray(data[:64])
    bad_version[4:8] = (99).to_bytes(4, "little")
    fails("version.gguf", bytes(bad_version), "unsupported GGUF version 99")
    with pytest.raises(ModelSourceError, match="not found"):
        loader.load_model(str(tmp_path / "absent.gguf"), workspace=ws)
    assert not (ws.cache_dir / loader.CONVERTED_SUBDIR).exists()


def test_non_gemma3_gguf_names_its_architecture(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "llama.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError, match=re.escape("general.architecture")) as info:
        loader.load_model(str(path), workspace=Workspace(tmp_path / "ws"))
    assert "'llama'" in info.value.message and "Gemma 3" in info.value.message


def test_gguf_that_is_not_plain_gemma3(tiny_gguf: dict, embedded_vocab: dict, tmp_path: Path):
    from gguf import GGUFWriter

    from pipeline.models.gguf_weights import check_gguf_tensors, gemma3_arch, read_gguf

    # An extra tensor (e.g. a vision tower) is refused by name.
    path = tmp_path / "extra.gguf"
    reader = read_gguf(tiny_gguf["path"])
    writer = GGUFWriter(str(path), "gemma3")
    for key in ("block_count", "embedding_length", "feed_forward_length", "context_length"):
        writer.add_uint32(f"gemma3.{key}", int(reader.metadata[f"gemma3.{key}"]))
    writer.add_uint32("gemma3.attention.head_count", 2)
    writer.add_uint32("gemma3.attention.head_count_kv", 1)
    writer.add_uint32("gemma3.attention.key_length", 32)
    writer.add_uint32("gemma3.attention.sliding_window", 16)
    writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32("gemma3.rope.freq_base", 10_000.0)
    writer.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32))
    writer.add_tensor("v.patch_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf = read_gguf(path)
    with pytest.raises(ModelSourceError, match=re.escape("rope.freq_base is 10000")):
        gemma3_arch(gguf)
    gguf.metadata["gemma3.rope.freq_base"] = 1e6
    arch = gemma3_arch(gguf)
    with pytest.raises(ModelSourceError, match=re.escape("unexpected tensors v.patch_embd.weight")):
        check_gguf_tensors(gguf, arch)
    gguf.metadata["gemma3.rope.scaling.factor"] = 8.0
    with pytest.raises(ModelSourceError, match="RoPE scaling"):
        gemma3_arch(gguf)


def test_embedded_model_description(tmp_path: Path) -> None:
    """The UI must be able to say the embedded model is the pretrained 270M (metadata only)."""
    from pipeline.models.embedded import embedded_gguf_path
    from pipeline.models.gguf_weights import gemma3_arch, gguf_info, read_gguf

    gguf = read_gguf(embedded_gguf_path())
    info = gguf_info(gguf)
    assert gemma3_arch(gguf).name == "gemma3_270m"
    assert (info.size_label, info.file_type, info.instruct) == ("270M", "Q4_K_M", False)


# --------------------------------------------------------------------------- other kinds


def test_tiny_source() -> None:
    events: list = []
    model = loader.load_model("tiny:3", dtype="float32", on_event=events.append)
    assert model.arch == TINY and model.source.kind == "tiny"
    assert type(model.causal_lm).__name__ == "Gemma3CausalLM"
    assert model.causal_lm.backbone is model.backbone
    assert "tiny" in model.description and "untrained" in model.description
    ids = model.tokenizer.encode("<bos><start_of_turn>user\nHello<end_of_turn>\n")
    assert ids[:3] == [2, 105, 2364]
    assert logits(model, ids).shape == (len(ids), TINY.vocabulary_size)
    again = loader.load_model("tiny:3", dtype="float32")
    np.testing.assert_array_equal(
        keras_weights(again.backbone)["decoder_block_5/attention/query/kernel"],
        keras_weights(model.backbone)["decoder_block_5/attention/query/kernel"],
    )
    assert stages(events)[-1] == "model"


def _random_tiny_backbone(seed: int) -> Any:
    from pipeline.models.config import build_backbone

    backbone = build_backbone(TINY, dtype="float32", seed=seed)
    rng = np.random.default_rng(seed)
    for v in backbone.weights:  # norms are zeros at init: make every weight count
        v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
    return backbone


def test_local_keras_hub_preset_folder(tmp_path: Path) -> None:
    from pipeline.models.tokenizer import load_tokenizer

    proto = load_tokenizer().proto
    backbone = _random_tiny_backbone(1)  # selects the JAX backend before keras_hub loads
    import keras_hub

    folder = tmp_path / "preset"
    backbone.save_to_preset(str(folder))
    keras_hub.models.Gemma3Tokenizer(proto=proto).save_to_preset(str(folder))
    reference = keras_weights(backbone)

    model = loader.load_model(str(folder), dtype="float32")
    assert model.source.kind == "preset" and model.arch == TINY
    for path, value in keras_weights(model.backbone).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)
    assert model.tokenizer.encode("<start_of_turn>model\n") == [105, 4368, 107]
    bf16 = loader.load_model(str(folder), dtype="bfloat16")
    assert {v.dtype for v in bf16.backbone.weights} == {"bfloat16"}

    scaled = tmp_path / "scaled"
    shutil.copytree(folder, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["config"]["global_rope_scaling_factor"] = 8.0
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="RoPE-scaled"):
        loader.load_model(str(scaled))
    (folder / "assets" / "tokenizer" / "vocabulary.spm").unlink()
    with pytest.raises(ModelSourceError, match=re.escape("vocabulary.spm")):
        loader.load_model(str(folder))


def test_local_hf_folder_and_its_errors(tmp_path: Path) -> None:
    from pipeline.export.hf_checkpoint import save_hf_checkpoint
    from pipeline.models.tokenizer import load_tokenizer

    proto = load_tokenizer().proto
    backbone = _random_tiny_backbone(2)
    folder = save_hf_checkpoint(backbone, tmp_path / "hf", tokenizer_proto=proto)
    reference = keras_weights(backbone)
    model = loader.load_model(str(folder), dtype="float32")
    assert model.source.kind == "hf" and model.arch == TINY
    for path, value in keras_weights(model.backbone).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)

    no_tok = tmp_path / "no_tok"
    shutil.copytree(folder, no_tok)
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(ModelSourceError, match=re.escape("no tokenizer.model")):
        loader.load_model(str(no_tok))
    llama = tmp_path / "llama"
    shutil.copytree(folder, llama)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ModelSourceError, match=re.escape(str(llama))) as info:
        loader.load_model(str(llama))
    assert "not Gemma 3" in info.value.message
    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    with (cut / "model.safetensors").open("r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ModelSourceError, match="not a valid safetensors file"):
        loader.load_model(str(cut))


# --------------------------------------------------------------------------- offline


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Kaggle or Hugging Face credentials, empty caches, no proxies."""
    for var in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loader, "KAGGLE_HOST", "www.kaggle.invalid")
    monkeypatch.setattr(loader, "HF_HOST", "huggingface.invalid")
    monkeypatch.setattr(loader, "PROBE_TIMEOUT_S", 3.0)
    return tmp_path


def test_preset_name_without_credentials_fails_fast(offline_env: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match="no Kaggle credentials") as info:
        loader.load_model("gemma3_instruct_1b")
    assert time.perf_counter() - start < 60  # keras-hub's import is most of it
    assert "KAGGLE_USERNAME" in info.value.message and "KAGGLE_KEY" in info.value.message
    assert "embedded" in str(info.value.hint)


def test_preset_name_without_network_fails_fast(
    offline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match="no network") as info:
        loader.load_model("kaggle://keras/gemma3/keras/gemma3_1b/3")
    assert time.perf_counter() - start < 60
    assert "www.kaggle.invalid" in info.value.message


def test_hf_handle_offline_fails_fast(offline_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match="no network"):
        loader.load_model("hf://google/gemma-3-270m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE") as info:
        loader.load_model("hf://google/gemma-3-270m")
    assert "embedded" in str(info.value.hint)
    assert time.perf_counter() - start < 30
