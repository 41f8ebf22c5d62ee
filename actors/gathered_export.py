"""A sharded model exported as a plain Hugging Face folder, gathered tensor by tensor.

The final policy of a data-parallel run must load with ``from_pretrained``
anywhere, but no rank should hold the whole model twice to write it: each
tensor is gathered (a collective every rank joins), rank 0 appends it to
the current safetensors shard and writes the shard once it reaches
``max_shard_bytes``, so host memory stays at one shard plus one tensor.
Tensors that share storage (tied input/output embeddings) are written once,
as ``save_pretrained`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hbat.actors.distributed import full
from hbat.models.atomic import atomic_dir


def export_gathered(model, tokenizer, path: str | Path, rank: int, extra: dict | None = None,
                    max_shard_bytes: int = 2 * 1024**3) -> str:
    """Write ``model`` (sharded or not) as a Hugging Face folder at ``path`` (rank 0 writes; all ranks call)."""
    from safetensors.torch import save_file

    def gathered():
        seen: set[int] = set()
        for name, t in model.state_dict().items():
            if id(t) in seen:
                continue
            seen.add(id(t))
            yield name, full(t).detach().to("cpu").contiguous()

    if rank != 0:
        for _ in gathered():
            pass
        return str(path)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    with atomic_dir(path) as tmp:
        shard: dict[str, torch.Tensor] = {}
        size, files, weight_map = 0, [], {}

        def flush():
            nonlocal shard, size
            if not shard:
                return
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

        for name, t in gathered():
            if tied and name == "lm_head.weight":
                continue
            if size and size + t.numel() * t.element_size() > max_shard_bytes:
                flush()
            shard[name] = t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t
            size += t.numel() * t.element_size()
        flush()
        if len(files) == 1:
            (tmp / files[0]).rename(tmp / "model.safetensors")
        else:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": sum((tmp / f).stat().st_size for f in files)}, "weight_map": weight_map},
                indent=2))
        model.config.save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra:
            (tmp / "hbat.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return str(path)
