"""The token budget that bounds a policy replica's memory.

A request's memory is dominated by its KV cache, which holds
``n x (prompt + max_tokens)`` tokens at the end of generation (every choice
keeps its own copy of the prompt). Two limits bound it:

* ``limits.max_request_tokens`` -- one request. A request over it can never
  run, so it is a **400** naming the limit (``code: request_tokens_exceeded``).
* ``limits.max_concurrent_tokens`` -- the sum over the requests a replica is
  running. A request that would push the sum over it is refused with a
  **429** (``code: token_budget_exhausted``, ``Retry-After``); it may succeed
  later, when running requests have finished.

The budget is reserved before generation starts and released when the last
token has been produced (or the client went away). A streaming response
releases it in its generator's ``finally``; a stream that never started is
released when its generator object is collected. Each replica runs its
handlers on one event loop, so no lock is needed.
"""

from __future__ import annotations

import weakref

from hbat.deploy.errors import APIError


class Reservation:
    """Tokens held by one running request; :meth:`release` is idempotent."""

    def __init__(self, budget: TokenBudget, tokens: int):
        self.budget, self.tokens = budget, tokens
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.in_use -= self.tokens

    def release_with(self, obj) -> None:
        """Also release when ``obj`` (a streaming generator) is garbage-collected."""
        weakref.finalize(obj, self.release)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TokenBudget:
    def __init__(self, per_request: int, concurrent: int):
        self.per_request = per_request
        self.concurrent = concurrent
        self.in_use = 0

    @staticmethod
    def cost(n: int, prompt_lens: list[int], max_tokens: int) -> int:
        """KV-cache tokens of a request. Several prompts of one completions
        request run one after the other, so the longest one counts."""
        return n * (max(prompt_lens) + max_tokens)

    def largest_max_tokens(self, n: int, prompt_len: int) -> int:
        """The most ``max_tokens`` a request of ``n`` choices with this prompt may have."""
        return self.per_request // n - prompt_len

    def check(self, n: int, prompt_len: int, max_tokens: int, param: str) -> int:
        """The request's cost; a 400 naming the limit if one request may never use that much."""
        tokens = n * (prompt_len + max_tokens)
        if tokens > self.per_request:
            raise APIError(
                400,
                f"This request needs n x (prompt + {param}) = {n} x ({prompt_len} + {max_tokens}) = {tokens} tokens "
                f"of KV cache, over this server's per-request limit of {self.per_request} tokens "
                "(limits.max_request_tokens). Reduce n, the prompt or " + param + ".",
                param=param,
                code="request_tokens_exceeded",
            )
        return tokens

    def reserve(self, tokens: int) -> Reservation:
        """Hold ``tokens`` for a request, or a 429 when the replica's budget is in use."""
        if self.in_use + tokens > self.concurrent:
            raise APIError(
                429,
                f"This replica is running requests holding {self.in_use} of its {self.concurrent} tokens of KV cache "
                f"(limits.max_concurrent_tokens); this request needs {tokens}. Retry shortly.",
                code="token_budget_exhausted",
                type="rate_limit_exceeded",
            )
        self.in_use += tokens
        return Reservation(self, tokens)
