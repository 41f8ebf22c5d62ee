"""Rollout backend on vLLM (GPU): same methods as :class:`HFGenerationBackend`.

Importing this module never needs vLLM; constructing :class:`VLLMBackend`
without it raises ``ImportError`` telling the user to ``pip install hbat[gpu]``.
It is written against the public vLLM API of the 0.10+ series (V1 engine) and
cannot be exercised on the CPU-only CI machines.

How the vLLM API is used, and where it is documented (pages read while
writing this; vLLM 0.10-era sources):

* ``vllm.LLM(model, dtype, tensor_parallel_size, gpu_memory_utilization, seed,
  **engine_args)`` incl. ``enable_sleep_mode`` / ``enable_prefix_caching`` /
  ``worker_extension_cls`` — the ``LLM`` class docstring and constructor in
  vllm/entrypoints/llm.py (github.com/vllm-project/vllm) and "Engine Arguments",
  https://docs.vllm.ai/en/v0.8.5/serving/engine_args.html
* ``LLM.generate(prompts, sampling_params, use_tqdm=False)`` with
  ``vllm.inputs.TokensPrompt(prompt_token_ids=ids)`` prompts; results come back
  sorted by request id, i.e. in prompt order, one ``RequestOutput`` per prompt
  whose ``.outputs`` are ``CompletionOutput(index, token_ids, ...)`` — same file.
* ``SamplingParams(n, temperature, top_p, top_k, max_tokens, seed)``:
  ``temperature=0`` is greedy, ``top_k=0`` disables top-k ("quietly accept -1
  as disabled, but prefer 0") — vllm/sampling_params.py ``_verify_args``; and
  "Sampling parameters", https://www.mintlify.com/vllm-project/vllm/features/sampling-params
* Weight updates follow vLLM's RLHF examples
  (examples/offline_inference/rlhf.py, rlhf_colocate.py, rlhf_utils.py in
  github.com/vllm-project/vllm): a ``worker_extension_cls`` given by its
  fully-qualified name is mixed into every worker (so it works whatever the
  worker class), its methods run on all TP/PP workers through
  ``LLM.collective_rpc(method, timeout=None, args=(), kwargs=None) -> list``,
  and inside a worker the model is ``self.model_runner.model`` whose
  ``load_weights(weights=[(hf_name, tensor), ...])`` shards and fuses (qkv,
  gate/up) by itself. The old ``llm.llm_engine.model_executor.driver_worker``
  path does not exist in the V1 multi-process engine. Signature also in Ray's
  https://docs.ray.io/en/master/serve/api/doc/ray.serve.llm.LLMServer.collective_rpc.html
* ``LLM.reset_prefix_cache()`` after a weight change (cached KV blocks were
  computed by the old weights); ``LLM.sleep(level)`` / ``LLM.wake_up(tags)``
  (tags ``"weights"``, ``"kv_cache"``) with ``enable_sleep_mode=True`` to free
  GPU memory while a colocated trainer runs — vllm/entrypoints/llm.py and
  "Sleep Mode", https://docs.vllm.ai/en/latest/features/sleep_mode/

Weights travel here as CPU tensors through ``collective_rpc`` (each worker
receives the full tensors and ``load_weights`` takes its shard). That suits the
models this project ships with; for multi-GB policies, broadcast over NCCL as
in vLLM's ``rlhf.py`` example or reload from a checkpoint folder in storage.
"""

from __future__ import annotations

import importlib.util

import torch

from hbat.actors.rollout_hf import normalize_weight_names
from hbat.actors.sampling import SamplingSettings

_INSTALL_HINT = "the vLLM rollout backend needs vLLM: pip install hbat[gpu]"

#: fully-qualified name handed to ``LLM(worker_extension_cls=...)``
WORKER_EXTENSION = "hbat.actors.rollout_vllm.HbatWorkerExtension"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class HbatWorkerExtension:
    """Mixed into every vLLM worker; called through ``LLM.collective_rpc``.

    ``self.model_runner`` and ``self.device`` are attributes of the vLLM worker
    this class is mixed into.
    """

    def hbat_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        model = self.model_runner.model
        loaded = model.load_weights(weights=[(n, t.to(self.device)) for n, t in weights])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return len(loaded) if loaded is not None else len(weights)


class VLLMBackend:
    """Batched sampling on a ``vllm.LLM`` engine living in this process."""

    name = "vllm"

    def __init__(self, model: str, dtype: str = "float32", device: str = "auto", **vllm_kwargs):
        if not vllm_available():
            raise ImportError(_INSTALL_HINT)
        try:
            from vllm import LLM
        except ImportError as err:  # installed but broken (CUDA / torch mismatch)
            raise ImportError(f"{_INSTALL_HINT} (import failed: {err})") from err
        if device not in ("auto", "cuda") and not str(device).startswith("cuda"):
            raise ValueError(f"the vLLM backend runs on a GPU; got device={device!r} (use backend='hf' on CPU)")
        from hbat.models.default import resolve_model_path
        from hbat.models.loader import load_tokenizer

        path = resolve_model_path(model)
        self._tokenizer = load_tokenizer(path)
        self.pad_token_id = self._tokenizer.pad_token_id
        eos = {int(self._tokenizer.eos_token_id)} if self._tokenizer.eos_token_id is not None else set()
        try:  # generation_config.json may list more end tokens (e.g. <|im_end|> and <|endoftext|>)
            from transformers import GenerationConfig

            gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
            eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        except (OSError, ValueError):
            pass
        self.eos_token_ids = sorted(eos)  # a response ending in one of these finished (else: truncated)
        kwargs = {
            "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype),
            "gpu_memory_utilization": 0.5,  # leave room for a colocated trainer
            "tensor_parallel_size": 1,
            "enable_prefix_caching": True,
            "worker_extension_cls": WORKER_EXTENSION,
        }
        kwargs.update(vllm_kwargs)
        self.llm = LLM(model=path, **kwargs)

    @property
    def tokenizer(self):
        return self._tokenizer

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> list[list[list[int]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompt_ids:
            return []
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if not sampling.greedy else 1.0,
            top_k=sampling.top_k if not sampling.greedy else 0,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            # vLLM stops at EOS and includes it in token_ids (skip_special_tokens
            # only affects .text); keep that so action masks cover the EOS.
        )
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        # RequestOutput.outputs is ordered by completion index, one per sample.
        return [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]

    def load_weights(self, weights: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Push a Hugging Face-named state dict into every worker (plain or peft names).

        vLLM's ``load_weights`` is partial by nature (it loads the names it is
        given), so ``strict`` is not enforced beyond the name normalisation.
        """
        named = [(n, t.detach().cpu().contiguous()) for n, t in normalize_weight_names(weights).items()]
        self.llm.collective_rpc("hbat_load_weights", args=(named,))
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory (needs ``enable_sleep_mode=True`` in ``vllm_kwargs``)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate GPU memory; ``tags=["weights"]`` first lets a weight update
        land before the KV cache comes back (then call again with ``["kv_cache"]``)."""
        self.llm.wake_up(tags)
