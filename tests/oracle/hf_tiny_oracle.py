"""Oracle side of the Hugging Face folder test in tests/pipeline/test_oracle.py.

Run with the oracle interpreter (``.venv-oracle/bin/python``), never imported by the tests:

    hf_tiny_oracle.py REQUEST.json

REQUEST: {"folder": path, "folder_bf16": path, "tokenizer_model": path, "ids": [int],
          "seed": int, "out": npz path}
Makes a tiny random ``Gemma3ForCausalLM`` (the real 262,144-token vocabulary, 6 layers: 5
sliding + 1 full, window 16), with every parameter random (norms too) and rounded to
bfloat16 precision, and saves it twice with ``tokenizer.model``: float32 in one
``model.safetensors`` to ``folder``, bfloat16 in shards (with an index) to ``folder_bf16``.
OUT (npz): ``logits`` [T, V] float32 for ``ids``; ``info`` (JSON bytes).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)


def main() -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    req = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    config = Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=16,
        max_position_embeddings=1024,
    )
    torch.manual_seed(int(req["seed"]))
    model = Gemma3ForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.3 if name.endswith("norm.weight") else 0.06
            param.copy_((torch.randn_like(param) * std).to(torch.bfloat16).float())
    for folder in (req["folder"], req["folder_bf16"]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(req["tokenizer_model"], Path(folder) / "tokenizer.model")
    with torch.no_grad():
        ids = torch.as_tensor([req["ids"]], dtype=torch.long)
        logits = model(input_ids=ids).logits[0].float().numpy()
    model.save_pretrained(req["folder"])
    # Last: .to(bfloat16) also rounds the RoPE buffers, which would change the logits.
    model.to(torch.bfloat16).save_pretrained(req["folder_bf16"], max_shard_size="20MB")
    info = {
        "layer_types": config.layer_types,
        "files": sorted(p.name for p in Path(req["folder_bf16"]).iterdir()),
    }
    np.savez(
        req["out"],
        logits=logits,
        info=np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8),
    )
    print(json.dumps(info))


if __name__ == "__main__":
    main()
