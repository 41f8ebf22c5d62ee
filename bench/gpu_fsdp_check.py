"""GPU check of the sharded policy: a world-size-1 FSDP2 bf16-mixed group on one
CUDA device (NCCL), an SFT step and a DPO step on a ~0.5B model built from a
config (random weights), reporting peak device memory and step times.

What it proves on a GPU that the CPU suite cannot: the NCCL rendezvous of
``GroupMember.join_group``, FSDP2's bf16 parameter gathers with fp32 master
weights and reductions on CUDA, the DCP checkpoint and the gathered export
from device shards. Prints one JSON line; exit 0 when every check passed.

    python bench/gpu_fsdp_check.py            # needs one CUDA device
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_model(folder: Path) -> str:
    """A Qwen2-architecture causal LM of ~0.5B parameters with the embedded model's tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hbat.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=1024, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=4096, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA device"}))
        return 1
    from hbat.actors.distributed import node_address
    from hbat.actors.policy import LossPart, PolicyWorker
    from hbat.orchestrator.config import OptimConfig
    from hbat.orchestrator.data import collate_pairwise, collate_sft

    out: dict = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "model")
        w = PolicyWorker(path, precision="bf16-mixed", device="cuda", shard=True, gradient_checkpointing=True)
        host, port = node_address()
        w.join_group(0, 1, "127.0.0.1", port)
        out["params_b"] = sum(p.numel() for p in w.model.parameters()) / 1e9
        pad = w.tokenizer.pad_token_id
        rng = random.Random(0)

        def row(n):
            return [rng.randrange(10, 40000) for _ in range(n)]

        sft = collate_sft([{"input_ids": row(512), "loss_mask": [0] * 128 + [1] * 384} for _ in range(8)], pad)
        pairs = []
        for _ in range(8):
            p = row(128)
            pairs.append({"chosen_input_ids": p + row(256), "chosen_loss_mask": [0] * 128 + [1] * 256,
                          "rejected_input_ids": p + row(256), "rejected_loss_mask": [0] * 128 + [1] * 256})
        dpo = collate_pairwise(pairs, pad)
        dpo["ref_logps"] = w.sequence_logps(dpo)
        optim = OptimConfig(lr=1e-5)
        w.begin_phase("sft", optim, 10)
        for name, part in (("sft", LossPart("sft", sft)),
                           ("dpo", LossPart("pairwise", dpo, options={"loss": "dpo", "beta": 0.1}))):
            w.train_step([part])  # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            stats = w.train_step([part])
            torch.cuda.synchronize()
            out[f"{name}_step_s"] = round(time.perf_counter() - t, 3)
            out[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
            out[f"{name}_loss"] = stats.get("sft/loss", stats.get("pref/loss"))
        master = {str(p.dtype) for p in w.model.parameters()}
        out["master_dtypes"] = sorted(master)
        ok = master == {"torch.float32"} and all(torch.isfinite(torch.tensor(out[f"{k}_loss"])) for k in ("sft", "dpo"))
        w.save_state(str(Path(tmp) / "state"))
        w.save_pretrained(str(Path(tmp) / "export"))
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(Path(tmp) / "export")
        out["checkpoint_and_export"] = True
        out["ok"] = bool(ok)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
