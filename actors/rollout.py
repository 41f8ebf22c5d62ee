"""The rollout worker: prompts (token ids) in, an :class:`Experience` out.

One interface, two engines: vLLM on a GPU (:mod:`hbat.actors.rollout_vllm`)
and ``transformers`` ``generate`` elsewhere (:mod:`hbat.actors.rollout_hf`).
The worker owns a weight *version*: the driver pushes the policy's weights
with ``update_weights(version, weights)`` after each optimiser phase, every
record it produces carries the version that generated it, and a stale push
(older version) is refused so replicas never step backwards.

:class:`RolloutWorker` is a plain class (tests, notebooks, the driver process);
:data:`RolloutActor` is the same class as a Ray actor — callers choose its
resources with ``RolloutActor.options(num_cpus=..., num_gpus=...)``.
"""

from __future__ import annotations


import ray
import torch

from hbat.actors.backends import resolve_backend
from hbat.actors.experience import Experience
from hbat.actors.training import RunFolderProbe, quiet_transformers
from hbat.actors.sampling import SamplingSettings



def build_experience(
    prompt_ids: list[list[int]],
    responses: list[list[list[int]]],
    pad_id: int,
    prompt_text: list[str] | None = None,
    meta: list[dict] | None = None,
    weight_version: int = 0,
) -> Experience:
    """Lay out prompts and their sampled responses as one :class:`Experience`.

    Row order: the responses of prompt 0, then those of prompt 1, ... and
    ``prompt_index`` holds the prompt number of every row (GRPO/RLOO groups).
    ``sequences[r]`` is the left-padded prompt followed by the right-padded
    response, so every prompt ends at column ``P`` (the longest prompt) and
    every response starts there. ``action_mask[r, t]`` (``[N, T-1]``) is 1 when
    token ``t+1`` is a response token, i.e. where the shifted log-prob of a
    response token sits. ``prompt_text`` / ``meta`` are per prompt and are
    repeated for each of its rows; ``response_text`` is left to the worker.
    """
    if len(responses) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but responses for {len(responses)}")
    for name, per_prompt in (("prompt_text", prompt_text), ("meta", meta)):
        if per_prompt is not None and len(per_prompt) != len(prompt_ids):
            raise ValueError(f"{name} has {len(per_prompt)} entries for {len(prompt_ids)} prompts")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; a prompt needs at least one token")

    rows = [(i, prompt_ids[i], r) for i in range(len(prompt_ids)) for r in responses[i]]
    n_rows = len(rows)
    p_width = max((len(p) for p in prompt_ids), default=0)
    r_width = max((len(r) for _, _, r in rows), default=0)
    width = p_width + r_width

    sequences = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n_rows, width), dtype=torch.long)
    action_mask = torch.zeros((n_rows, max(width - 1, 0)), dtype=torch.long)
    prompt_index = torch.empty(n_rows, dtype=torch.long)
    for row, (i, prompt, response) in enumerate(rows):
        prompt_index[row] = i
        start = p_width - len(prompt)
        sequences[row, start:p_width] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, start:p_width] = 1
        if response:
            end = p_width + len(response)
            sequences[row, p_width:end] = torch.as_tensor(response, dtype=torch.long)
            attention_mask[row, p_width:end] = 1
            action_mask[row, p_width - 1 : end - 1] = 1

    def expand(per_prompt):
        if per_prompt is None:
            return []
        return [per_prompt[i] if not isinstance(per_prompt[i], dict) else dict(per_prompt[i]) for i, _, _ in rows]

    return Experience(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        prompt_index=prompt_index,
        prompt_text=expand(prompt_text),
        meta=expand(meta),
        weight_version=int(weight_version),
    )


class RolloutWorker(RunFolderProbe):
    """Generates rollouts with the current policy weights (see module docstring)."""

    def __init__(
        self,
        model: str,
        backend: str = "auto",
        dtype: str = "float32",
        device: str = "auto",
        vllm_kwargs: dict | None = None,
        torch_threads: int | None = None,
    ):
        """``torch_threads``: the HF backend's thread pool (Ray gives an actor
        with a fractional CPU one thread unless told; generation then ran
        1.4x slower than TRL's on the same 2 cores)."""
        quiet_transformers()  # no per-actor "Loading weights" bars in the user's terminal
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self._backend_name = resolve_backend(backend)
        if self._backend_name == "vllm":
            from hbat.actors.rollout_vllm import VLLMBackend

            self.backend = VLLMBackend(model, dtype=dtype, device=device, **(vllm_kwargs or {}))
        else:
            if vllm_kwargs:
                raise ValueError("vllm_kwargs were given but the rollout backend is 'hf'")
            from hbat.actors.rollout_hf import HFGenerationBackend

            self.backend = HFGenerationBackend(model, dtype=dtype, device=device)
            if self.backend.device.type == "cpu":
                from hbat.actors.host_memory import keep_freed_blocks

                keep_freed_blocks()  # the KV cache and logits are allocated anew every decode step
        self.model_name = model
        self._version = 0

    # ------------------------------------------------------------------ info
    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def backend_name(self) -> str:
        return self._backend_name

    def weight_version(self) -> int:
        return self._version

    def set_threads(self, n: int) -> int:
        """Intra-op CPU threads for the HF backend (Ray actors start with one per CPU granted)."""
        torch.set_num_threads(max(1, int(n)))
        return torch.get_num_threads()

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingSettings,
        prompt_text: list[str] | None = None,
        meta: list[dict] | None = None,
    ) -> Experience:
        """Sample ``sampling.n`` responses per prompt; rows grouped per prompt.

        ``prompt_text`` defaults to the decoded prompts (special tokens dropped).
        """
        prompt_ids = [list(map(int, p)) for p in prompt_ids]
        responses = self.backend.generate(prompt_ids, sampling)
        tok = self.tokenizer
        if prompt_text is None:
            prompt_text = tok.batch_decode(prompt_ids, skip_special_tokens=True)
        exp = build_experience(
            prompt_ids,
            responses,
            pad_id=tok.pad_token_id,
            prompt_text=list(prompt_text),
            meta=meta,
            weight_version=self._version,
        )
        flat = [r for group in responses for r in group]
        ends = set(self.backend.eos_token_ids)
        eos = torch.tensor([bool(r) and r[-1] in ends for r in flat], dtype=torch.bool)
        return exp.with_fields(response_text=tok.batch_decode(flat, skip_special_tokens=True), eos=eos,
                               temperature=sampling.temperature if sampling.temperature > 0 else 1.0)

    def generate_records(self, records: list[dict], sampling: SamplingSettings) -> Experience:
        """:meth:`generate` on prompt records as the data loader makes them
        (``prompt_ids``, ``prompt_text``, ``meta``): what the driver scatters
        over the replicas, a contiguous slice each."""
        return self.generate([r["prompt_ids"] for r in records], sampling,
                             [r["prompt_text"] for r in records], [r["meta"] for r in records])

    def generate_text(self, prompts: list[str] | list[list[dict]], sampling: SamplingSettings) -> list[list[str]]:
        """Text in, text out (evaluation, PopAlign pair building).

        A message list is rendered with the chat template and a generation
        prompt; a plain string is treated as one user message when the
        tokenizer has a chat template, and used verbatim otherwise.
        """
        ids = [self._encode_prompt(p) for p in prompts]
        responses = self.backend.generate(ids, sampling)
        tok = self.tokenizer
        return [tok.batch_decode(group, skip_special_tokens=True) for group in responses]

    def _encode_prompt(self, prompt: str | list[dict]) -> list[int]:
        tok = self.tokenizer
        has_template = getattr(tok, "chat_template", None) is not None
        if isinstance(prompt, str):
            if not has_template:
                return tok(prompt, add_special_tokens=True)["input_ids"]
            prompt = [{"role": "user", "content": prompt}]
        is_message = lambda m: isinstance(m, dict) and "role" in m and "content" in m  # noqa: E731
        if not isinstance(prompt, list) or not all(is_message(m) for m in prompt):
            raise ValueError("a prompt must be a string or a list of {'role', 'content'} messages")
        if not has_template:
            raise ValueError(f"tokenizer of '{self.model_name}' has no chat template; pass plain strings")
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ weights
    def update_weights(self, version: int, weights: dict[str, torch.Tensor]) -> int:
        """Load the policy's weights tagged ``version``; older versions are refused."""
        version = int(version)
        if version < self._version:
            raise ValueError(
                f"stale weights: version {version} is older than the loaded version {self._version}"
            )
        self.backend.load_weights(weights)
        self._version = version
        return version

    def load_exported(self, packed: tuple[int, dict[str, torch.Tensor]]) -> int:
        """:meth:`update_weights` on the ``(version, weights)`` pair ``PolicyWorker.export_weights`` returns,
        so the driver can hand over the policy's object reference without fetching it."""
        version, weights = packed
        return self.update_weights(version, weights)

    def update_weights_from_checkpoint(self, version: int, path: str) -> int:
        """Like :meth:`update_weights`, reading a saved Hugging Face folder (``*.safetensors``).

        The storage route for big policies and for replicas that join late: the
        trainer saves once, every replica loads the folder it is pointed at.
        """
        from pathlib import Path

        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in checkpoint folder {path}")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(str(f)))
        return self.update_weights(version, weights)


#: :class:`RolloutWorker` as a Ray actor; set resources with ``.options(num_cpus=..., num_gpus=...)``.
RolloutActor = ray.remote(RolloutWorker)
