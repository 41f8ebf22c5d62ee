"""Which generation engine runs: one answer for rollouts, ``hbat generate``,
evaluation and serving.

Two engines exist: transformers (``hf``; ``transformers`` is the same name in
the serving CLI) everywhere, and vLLM on GPUs. ``auto`` picks vLLM when it is
installed and a GPU is visible -- to the calling process for an actor, to the
Ray cluster for a Serve deployment (the caller says which by passing
``gpus``). Asking for vLLM where it is not installed is a ValueError that says
how to get it (:class:`BackendUnavailable`), raised where the choice is made, before any model loads.
"""

from __future__ import annotations

import importlib.util
import sys

BACKENDS = ("auto", "hf", "vllm")
ALIASES = {"transformers": "hf"}


class BackendUnavailable(ImportError, ValueError):
    """vLLM was asked for where it is not installed (an ImportError of the engine and
    a bad setting at once, so both kinds of caller catch it)."""


def vllm_installed() -> bool:
    if "vllm" in sys.modules:  # imported already (or a stand-in module without a spec)
        return True
    return importlib.util.find_spec("vllm") is not None


def local_gpus() -> bool:
    """A CUDA device is visible to this process (without initialising CUDA on a CPU build)."""
    import torch

    return torch.backends.cuda.is_built() and torch.cuda.is_available()


def resolve_backend(backend: str, gpus: bool | None = None) -> str:
    """``hf`` or ``vllm`` for ``backend`` (``auto``/``hf``/``transformers``/``vllm``).

    ``gpus``: whether GPUs are available to the engine (None: this process's).
    """
    name = ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if name == "vllm" and not vllm_installed():
        raise BackendUnavailable("backend 'vllm' needs vLLM: pip install hbat[gpu] on GPU nodes; "
                                 "use backend hf/transformers (or auto) on CPU")
    if name == "auto":
        has_gpus = local_gpus() if gpus is None else gpus
        return "vllm" if vllm_installed() and has_gpus else "hf"
    return name
