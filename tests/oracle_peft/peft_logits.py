"""Oracle side of tests/pipeline/test_peft_oracle.py: transformers + PEFT logits (torch, CPU).

Run with the oracle interpreter (``.venv-oracle/bin/python``), never imported by the tests:

    peft_logits.py REQUEST.json

REQUEST: {"ids": npz with "ids" [1, T] int, "out": npz to write,
          "base": HF folder | null, "gguf": GGUF path | null,
          "adapter": PEFT folder (ours) | null,
          "native": {"folder", "rank", "alpha", "targets", "seed"} | null}
OUT: base [T, V], adapted [T, V] (with "adapter"), native [T, V] (with "native": a PEFT-made
adapter with random B saved to "folder"), and "info" (JSON bytes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)


def load_base(req: dict):
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM

    if req.get("gguf"):
        gguf = Path(req["gguf"])
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            attn_implementation="eager",
        )
    else:
        model = Gemma3ForCausalLM.from_pretrained(
            req["base"], dtype=torch.float32, attn_implementation="eager"
        )
    return model.eval()


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> np.ndarray:
    return model(input_ids=ids).logits[0].float().numpy()


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    ids = torch.from_numpy(np.load(req["ids"])["ids"].astype(np.int64))
    out: dict[str, np.ndarray] = {}
    info: dict = {}
    model = load_base(req)
    info["config"] = {
        k: getattr(model.config, k, None)
        for k in ("layer_types", "sliding_window", "query_pre_attn_scalar", "rope_parameters")
    }
    out["base"] = logits(model, ids)

    if req.get("adapter"):
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors.numpy import load_file

        peft = PeftModel.from_pretrained(model, req["adapter"]).eval()
        out["adapted"] = logits(peft, ids)
        state = {k: v.numpy() for k, v in get_peft_model_state_dict(peft).items()}
        ours = load_file(str(Path(req["adapter"]) / "adapter_model.safetensors"))
        info["adapter_keys_equal"] = sorted(state) == sorted(ours)
        info["adapter_values_equal"] = info["adapter_keys_equal"] and all(
            np.array_equal(state[k], ours[k]) for k in ours
        )
        info["lora_modules"] = sum(1 for n, _ in peft.named_modules() if n.endswith("lora_A"))
        model = peft.unload()

    native = req.get("native")
    if native:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(native["seed"])
        cfg = LoraConfig(
            r=native["rank"],
            lora_alpha=native["alpha"],
            target_modules=native["targets"],
            task_type="CAUSAL_LM",
        )
        peft = get_peft_model(model, cfg).eval()
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
        peft.save_pretrained(native["folder"])
        out["native"] = logits(peft, ids)

    out["info"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    np.savez(req["out"], **out)


if __name__ == "__main__":
    main()
