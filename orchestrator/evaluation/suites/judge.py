"""Pairwise win rate judged by an LLM behind any OpenAI-compatible chat endpoint
(GPT-4 class APIs, vLLM / Ray Serve ``/v1/chat/completions``).

Each prompt is judged twice, once with the policy's response shown first and
once with it shown second; the per-prompt score is the mean of the two
verdicts (policy better = 1, tie or unreadable verdict = 0.5, worse = 0), so a
judge that always prefers position A scores exactly 0.5. ``judge/consistency``
is the share of prompts whose two verdicts agree once the swap is undone.

Off by default; it needs ``judge.url`` and a key in the variable named by
``judge.api_key_env`` (the key is never written to results). Requests use the
standard library only.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from hbat.orchestrator.evaluation.settings import JudgeConfig
from hbat.orchestrator.evaluation.stats import Metric
from hbat.orchestrator.evaluation.suites.base import Context, Suite

SYSTEM = ("You are an impartial judge comparing two AI assistant responses to the same user prompt. "
          "Judge which response is more {criteria}. Ignore the order in which the responses appear and "
          "their length unless length affects quality. Reply with exactly one of: A, B, tie.")
USER = ("[User prompt]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
        "Which response is better? Answer A, B or tie.")

_VERDICT = re.compile(r"\b(A|B|[Tt][Ii][Ee])\b")


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'tie' or None (unreadable).

    A bare answer ("a", "[[B]]", "Tie.") is read case-insensitively; in a longer
    reply the last standalone capital A / B or "tie" wins ("A is close, but B").
    """
    bare = (text or "").strip().strip(".*[]()'\"` ").lower()
    if bare in ("a", "b"):
        return bare.upper()
    if bare == "tie":
        return "tie"
    found = _VERDICT.findall(text or "")
    if not found:
        return None
    return "tie" if found[-1].lower() == "tie" else found[-1]


class JudgeClient:
    def __init__(self, cfg: JudgeConfig, api_key: str | None = None):
        self.cfg = cfg
        self.url = endpoint(cfg.url)
        self.key = api_key if api_key is not None else os.environ.get(cfg.api_key_env, "")

    def ask(self, prompt: str, a: str, b: str) -> str:
        body = {"model": self.cfg.model, "temperature": 0, "max_tokens": self.cfg.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM.format(criteria=self.cfg.criteria)},
                             {"role": "user", "content": USER.format(prompt=prompt, a=a, b=b)}]}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    data = json.loads(resp.read())
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    raise RuntimeError(f"judge endpoint {self.url} answered HTTP {exc.code}: "
                                       f"{exc.read()[:300]!r}") from None
            except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as exc:
                last = exc
            time.sleep(min(2 ** attempt, 20))
        raise RuntimeError(f"judge endpoint {self.url} failed after {self.cfg.retries + 1} tries: {last}")


def judge_pairs(client: JudgeClient, prompts: list[str], mine: list[str], theirs: list[str],
                progress: bool = True) -> tuple[list[float], list[float], int]:
    """(per-prompt score, per-prompt consistency, unreadable verdicts)."""
    jobs = [(p, m, t) for p, m, t in zip(prompts, mine, theirs)] + [(p, t, m) for p, m, t in zip(prompts, mine, theirs)]
    with ThreadPoolExecutor(client.cfg.max_workers) as pool:
        verdicts = list(tqdm(pool.map(lambda j: parse_verdict(client.ask(*j)), jobs), total=len(jobs),
                             desc="judge", disable=not progress))
    n = len(prompts)
    first, second = verdicts[:n], verdicts[n:]
    # first: policy is A; second: policy is B
    s1 = [{"A": 1.0, "B": 0.0}.get(v, 0.5) for v in first]
    s2 = [{"B": 1.0, "A": 0.0}.get(v, 0.5) for v in second]
    scores = [(x + y) / 2 for x, y in zip(s1, s2)]
    consistent = [float(x == y) for x, y in zip(s1, s2)]
    unreadable = sum(v is None for v in verdicts)
    return scores, consistent, unreadable


class JudgeSuite(Suite):
    name = "judge"
    description = "pairwise win rate vs the baseline judged by an OpenAI-compatible LLM, both orders"

    def missing(self, ctx: Context) -> str | None:
        if ctx.cfg.judge is None:
            return "no judge endpoint configured (judge.url)"
        return None if ctx.baseline is not None else "no baseline given"

    def run(self, ctx: Context) -> dict[str, Metric]:
        client = JudgeClient(ctx.cfg.judge)
        scores, consistent, unreadable = judge_pairs(client, [ex.prompt_text for ex in ctx.examples],
                                                     ctx.responses, ctx.baseline, ctx.cfg.progress)
        ctx.extra["judge"] = {"model": ctx.cfg.judge.model, "url": client.url, "unreadable_verdicts": unreadable}
        return {"winrate/judge": Metric(scores), "judge/consistency": Metric(consistent)}
