"""The transformers generation engine behind the CPU (or single-GPU) policy
deployment.

A request is a generator that advances one token per ``next()``: a prefill
of the prompt (``n`` copies of it, one per choice, so no padding is needed),
then one forward per step on the KV cache. The deployment runs every step on
one worker thread, so concurrent requests interleave token by token and a
long generation never blocks a short one, and streaming is the natural form
(non-streaming requests just collect the steps). On GPU the vLLM backend
(``ray.serve.llm``) does continuous batching instead.

Text is detokenised incrementally from the whole generated id list, so
multi-byte characters split across tokens are held back until complete, and
text that could be the start of a ``stop`` string is held back until it is
known not to be one; the stop string itself is never returned.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from hbat.deploy.sampling import (
    SamplingParams,
    adjust_logits,
    choose,
    logprob_info,
    make_generator,
)
from hbat.models import load_causal_lm, load_tokenizer

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class StepToken:
    """What one choice (``row``) produced at one step."""

    row: int
    token_id: int
    text: str  # text released by this step (may be empty)
    finish_reason: str | None = None  # "stop" | "length" when the row ends here
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    is_stop_token: bool = False


class TransformersEngine:
    def __init__(self, checkpoint: str, *, dtype: str = "auto", device: str = "auto", weight_version=None):
        self.checkpoint = checkpoint
        self.weight_version = weight_version
        self.tokenizer = load_tokenizer(checkpoint)
        self.model = load_causal_lm(checkpoint, dtype=dtype, device=device)
        self.device = next(self.model.parameters()).device
        cfg = self.model.config
        ctx = getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", None)
        self.context_len = int(ctx) if ctx and ctx < 10**8 else 2048
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.stop_token_ids = self._stop_ids()
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.loaded_at = int(time.time())
        # transformers renamed forward's past_key_values to cache (5.x); pass whichever it takes
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    # -------------------------------------------------------------- memory
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of one choice holds: 2 (K, V) x layers x kv heads x head dim x dtype size."""
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        size = next(self.model.parameters()).element_size()
        return 2 * c.num_hidden_layers * heads * head_dim * size

    def request_memory_bytes(self, n: int, prompt_tokens: int, max_tokens: int) -> int:
        """Upper bound on the memory one request adds to the replica (deploy/README.md, "Memory per request").

        * KV cache: ``n x (prompt + max_tokens)`` tokens x :meth:`kv_bytes_per_token`,
          twice over for one layer while ``torch.cat`` grows it;
        * prefill working set (one copy of the prompt, one layer at a time):
          hidden states, attention projections and the MLP's three intermediate
          tensors, ``prompt x (6 hidden + 3 intermediate)`` values, and the last
          position's logits only;
        * per decoding step: ``n x vocab`` logits and their float copies (6 of them
          through penalties, top-k/top-p sorting and softmax);
        * 64 MiB for the allocator and Python objects.
        """
        c = self.model.config
        size = next(self.model.parameters()).element_size()
        tokens = n * (prompt_tokens + max_tokens)
        kv = tokens * self.kv_bytes_per_token() * (1 + 1 / c.num_hidden_layers)
        inter = getattr(c, "intermediate_size", 4 * c.hidden_size)
        prefill = prompt_tokens * (6 * c.hidden_size + 3 * inter) * max(size, 4)
        step = 6 * n * self.vocab_size * 8
        return int(kv + prefill + step + (64 << 20))

    # ---------------------------------------------------------------- text
    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        specials = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        try:
            specials |= set(self.tokenizer.get_added_vocab().values())
        except Exception:  # noqa: BLE001 - not every tokenizer has added vocab
            pass
        vocab = self.tokenizer.get_vocab()
        for tok in _END_OF_TURN:
            if tok in vocab and vocab[tok] in specials and vocab[tok] != self.tokenizer.pad_token_id:
                ids.add(int(vocab[tok]))
        return ids

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """Render with the chat template (+ generation prompt), then tokenise."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):
            text = text[0] if isinstance(text, list) else str(text)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---------------------------------------------------------- generation
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[list[StepToken]]:
        """Yield, per step, the tokens of the choices still running."""
        if not prompt_ids:
            raise ValueError("the prompt is empty after tokenisation")
        n = params.n
        room = self.context_len - len(prompt_ids)
        max_new = max(0, min(params.max_tokens, room))
        gen = make_generator(params.seed, self.device)
        bias = None
        if params.logit_bias:
            bias = torch.zeros(self.vocab_size, device=self.device)
            for tid, value in params.logit_bias.items():
                bias[tid] = value
        use_counts = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        counts = torch.zeros(n, self.vocab_size, device=self.device) if use_counts else None
        k = params.top_logprobs if params.logprobs else 0
        rows = [_RowText(self, params.stop) for _ in range(n)]
        done = [False] * n
        # Prefill once, for one copy of the prompt, keeping only the last
        # position's logits ([1, 1, vocab] instead of [n, prompt, vocab]); the
        # KV cache is then repeated for the n choices. See request_memory_bytes.
        inp = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        past = None
        for step in range(max_new):
            with torch.inference_mode():
                out = self.model(input_ids=inp, use_cache=True, logits_to_keep=1, **{self._cache_arg: past})
                past = out.past_key_values
                if step == 0 and n > 1:
                    past.batch_repeat_interleave(n)
            raw = out.logits[:, -1, :].expand(n, -1) if step == 0 else out.logits[:, -1, :]
            tokens = choose(adjust_logits(raw, params, counts, bias), params, gen)
            if params.logprobs:
                picked, top_ids, top_vals = logprob_info(raw, tokens, k)
            if counts is not None:
                counts.scatter_add_(1, tokens[:, None], torch.ones(n, 1, device=self.device))
            last_step = step == max_new - 1
            events = []
            for r in range(n):
                if done[r]:
                    continue
                tid = int(tokens[r])
                ev = rows[r].push(tid, last_step)
                ev.row = r
                if params.logprobs and not ev.is_stop_token:
                    ev.logprob = float(picked[r])
                    if k:
                        ev.top_logprobs = [(int(i), float(v)) for i, v in zip(top_ids[r], top_vals[r], strict=True)]
                done[r] = ev.finish_reason is not None
                events.append(ev)
            yield events
            if all(done):
                return
            inp = tokens[:, None]
        if max_new == 0:  # no room at all: finish every choice with "length"
            yield [StepToken(row=r, token_id=-1, text="", finish_reason="length") for r in range(n)]


class _RowText:
    """Incremental detokenisation and stop handling for one choice."""

    def __init__(self, engine: TransformersEngine, stop: list[str]):
        self.engine = engine
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already released
        self.count = 0  # tokens generated, stop token included

    def push(self, token_id: int, last_step: bool) -> StepToken:
        self.count += 1
        if token_id in self.engine.stop_token_ids:
            return StepToken(0, token_id, self._release(final=True)[0], "stop", is_stop_token=True)
        self.ids.append(token_id)
        text, hit = self._release(final=last_step)
        if hit:
            return StepToken(0, token_id, text, "stop")
        return StepToken(0, token_id, text, "length" if last_step else None)

    def _release(self, final: bool) -> tuple[str, bool]:
        full = self.engine.decode(self.ids)
        if self.stop:
            start = max(0, self.emitted - max(len(s) for s in self.stop))
            hits = [p for p in (full.find(s, start) for s in self.stop) if p >= 0]
            if hits:
                cut = max(min(hits), self.emitted)
                out = full[self.emitted:cut]
                self.emitted = cut
                return out, True
        safe = len(full)
        if not final:
            if full.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = len(full.rstrip("\ufffd"))
            for s in self.stop:  # hold back a possible beginning of a stop string
                for j in range(min(len(s) - 1, safe), 0, -1):
                    if full[:safe].endswith(s[:j]):
                        safe = min(safe, len(full[:safe]) - j)
                        break
        safe = max(safe, self.emitted)
        out = full[self.emitted:safe]
        self.emitted = safe
        return out, False
