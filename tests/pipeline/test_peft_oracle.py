"""Our LoRA and HF checkpoint against Hugging Face transformers + PEFT (the oracle).

The torch side runs in the oracle interpreter as ``tests/oracle_peft/peft_logits.py``
(arrays exchanged as .npz in tmp_path). It starts first, and the keras side works while it
runs. Proves: ``save_hf_checkpoint`` loads into ``Gemma3ForCausalLM`` with the same logits;
``save_peft`` loads into ``PeftModel`` with every tensor in place and the same logits as our
merged keras model; a PEFT-written adapter loads with ``load_peft`` and merges to PEFT's
logits; on the real 270M model (GGUF) the same holds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.export import hf_checkpoint as hf
from pipeline.models import lora
from pipeline.models.config import ARCH_270M, ARCH_TINY
from pipeline.models.lora import AdapterMeta
from tests.pipeline.test_lora import keras_logits, random_adapter, randomize_weights

REPO = Path(__file__).resolve().parents[2]
ORACLE_SCRIPT = REPO / "tests" / "oracle_peft" / "peft_logits.py"
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def oracle_python() -> Path:
    """The oracle interpreter (transformers + PEFT + torch CPU)."""
    env = os.environ.get("GEMMA_TUI_ORACLE_PYTHON")
    path = Path(env) if env else REPO / ".venv-oracle" / "bin" / "python"
    if not path.is_file():
        pytest.skip(f"no oracle environment at {path}; run `bash scripts/make_oracle_env.sh`")
    return path


def start_oracle(python: Path, tmp: Path, ids: np.ndarray, **request) -> tuple:
    np.savez(tmp / "ids.npz", ids=ids)
    req = {"ids": str(tmp / "ids.npz"), "out": str(tmp / "oracle.npz"), **request}
    (tmp / "request.json").write_text(json.dumps(req))
    proc = subprocess.Popen(
        [str(python), str(ORACLE_SCRIPT), str(tmp / "request.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    return proc, tmp / "oracle.npz"


def finish_oracle(proc: subprocess.Popen, out: Path, timeout: float = 600) -> tuple[dict, dict]:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"oracle failed:\n{output[-4000:]}"
    with np.load(out) as npz:
        arrays = {k: npz[k] for k in npz.files}
    info = json.loads(bytes(arrays.pop("info")))
    return arrays, info


def max_abs(x: np.ndarray, y: np.ndarray) -> float:
    assert x.shape == y.shape
    return float(np.abs(x.astype(np.float64) - y).max())


def test_tiny_checkpoint_and_adapter_match_transformers_peft(oracle_python, tmp_path: Path):
    from pipeline.models.config import build_backbone

    backbone = build_backbone(ARCH_TINY, dtype="float32", seed=0)
    randomize_weights(backbone, seed=0)
    rng = np.random.default_rng(0)
    ids = np.array([[2, *rng.integers(3, ARCH_TINY.vocabulary_size, 39)]], dtype=np.int32)
    assert ids.shape[1] > ARCH_TINY.sliding_window_size  # the window matters
    meta = AdapterMeta(rank=4, alpha=8.0, targets=lora.TARGETS, arch=ARCH_TINY)
    adapter = random_adapter(meta, seed=1, b_std=0.2)

    base_dir = hf.save_hf_checkpoint(backbone, tmp_path / "base")
    ours_dir = lora.save_peft(tmp_path / "ours", adapter, meta, str(base_dir))
    native_dir = tmp_path / "native"
    proc, out = start_oracle(
        oracle_python,
        tmp_path,
        ids,
        base=str(base_dir),
        adapter=str(ours_dir),
        native={"folder": str(native_dir), "rank": 4, "alpha": 8, "targets": HF_TARGETS, "seed": 0},
    )
    original = hf.backbone_weights(backbone)
    base = keras_logits(backbone, ids)
    lora.merge_into_backbone(backbone, adapter, meta)
    merged = keras_logits(backbone, ids)
    theirs, info = finish_oracle(proc, out)

    assert info["adapter_keys_equal"] and info["adapter_values_equal"]
    assert info["lora_modules"] == 6 * 7
    assert info["config"]["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    scale = float(np.abs(base).max())
    print(f"tiny |logit| max {scale:.3g}, adapter moves logits by {max_abs(merged, base):.3g}")
    print(f"tiny base: transformers vs keras max |d| {max_abs(theirs['base'], base):.3g}")
    print(f"tiny ours: PEFT vs keras merged max |d| {max_abs(theirs['adapted'], merged):.3g}")
    assert scale > 1.0 and max_abs(merged, base) > 0.1  # the comparisons below are not trivial
    assert max_abs(theirs["base"], base) < 1e-4
    assert max_abs(theirs["adapted"], merged) < 1e-4

    # What PEFT writes: the same tensor names and shapes, and the config fields we write agree.
    ours_t, _ = hf.read_safetensors(ours_dir / "adapter_model.safetensors")
    native_t, native_md = hf.read_safetensors(native_dir / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours_t.items()} == {k: v.shape for k, v in native_t.items()}
    assert all(v.dtype == np.float32 for v in native_t.values()) and native_md == {"format": "pt"}
    ours_c = json.loads((ours_dir / "adapter_config.json").read_text())
    native_c = json.loads((native_dir / "adapter_config.json").read_text())
    assert set(ours_c) <= set(native_c)
    for key in set(ours_c) - {"base_model_name_or_path", "target_modules"}:
        assert ours_c[key] == native_c[key], key
    assert sorted(ours_c["target_modules"]) == sorted(native_c["target_modules"])

    # A PEFT-written adapter loads and merges to PEFT's logits.
    native, native_meta = lora.load_peft(native_dir, expect=meta)
    assert native_meta == meta
    hf.assign_weights(backbone, original)
    lora.merge_into_backbone(backbone, native, native_meta)
    merged_native = keras_logits(backbone, ids)
    d_native = max_abs(theirs["native"], merged_native)
    print(f"tiny PEFT-made: PEFT vs keras merged max |d| {d_native:.3g}")
    assert max_abs(merged_native, base) > 0.1
    assert d_native < 1e-4


@pytest.mark.slow
def test_270m_adapter_matches_transformers_peft(oracle_python, tmp_path: Path):
    from pipeline.models.embedded import embedded_gguf_path

    gguf = embedded_gguf_path()  # the same file load_model("embedded") reads
    rng = np.random.default_rng(0)
    ids = np.array([[2, *rng.integers(3, ARCH_270M.vocabulary_size, 23)]], dtype=np.int32)
    meta = AdapterMeta(rank=8, alpha=16.0, targets=lora.TARGETS, arch=ARCH_270M)
    adapter = random_adapter(meta, seed=2, b_std=0.01)
    ours_dir = lora.save_peft(tmp_path / "ours", adapter, meta, "google/gemma-3-270m")
    proc, out = start_oracle(oracle_python, tmp_path, ids, gguf=str(gguf), adapter=str(ours_dir))

    from pipeline.models.loader import load_model

    backbone = load_model("embedded", dtype="float32").backbone
    base = keras_logits(backbone, ids)
    lora.merge_into_backbone(backbone, adapter, meta)
    merged = keras_logits(backbone, ids)
    theirs, info = finish_oracle(proc, out)

    assert info["adapter_keys_equal"] and info["adapter_values_equal"]
    assert info["lora_modules"] == 18 * 7
    print(f"270m |logit| max {np.abs(base).max():.3g}, adapter moves {max_abs(merged, base):.3g}")
    print(f"270m base: transformers(GGUF) vs keras max |d| {max_abs(theirs['base'], base):.3g}")
    print(f"270m ours: PEFT vs keras merged max |d| {max_abs(theirs['adapted'], merged):.3g}")
    assert max_abs(merged, base) > 0.5
    assert max_abs(theirs["base"], base) < 1e-3
    assert max_abs(theirs["adapted"], merged) < 1e-3
    assert (theirs["adapted"].argmax(-1) == merged.argmax(-1)).all()
