"""KL divergence of the evaluated policy from the reference model.

Along each evaluated response y (greedy by default) the worker computes, at
every response position t, the exact KL between the two next-token
distributions, KL(pi(.|x, y<t) || pi_ref(.|x, y<t)), summed over the
vocabulary — no sampling estimator is needed, so the number is deterministic
and has no Monte-Carlo noise. Reported per response:

* ``kl/seq``: the sum over response tokens (nats per response);
* ``kl/token``: per response token (weighted by response length);
* ``kl/logratio``: log pi(y|x) - log pi_ref(y|x) of the response itself
  (the k1 term PPO's KL penalty uses).

Note that y is the policy's (greedy) response, not a sample, so ``kl/seq`` is
the KL along the responses being evaluated, not E_{y~pi} of the sequence KL.
"""

from __future__ import annotations

import ray
import torch

from hbat.actors.experience import Experience
from hbat.actors.training import quiet_transformers
from hbat.models import load_causal_lm, resolve_device
from hbat.orchestrator.evaluation.generation import torch_threads
from hbat.orchestrator.evaluation.stats import Metric
from hbat.orchestrator.evaluation.suites.base import Context, Suite


class KLWorker:
    """Holds the policy and the reference; returns per-row KL statistics."""

    def __init__(self, policy: str, reference: str, *, dtype: str = "float32", device: str = "auto",
                 torch_threads: int | None = None):
        quiet_transformers()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.reference_name = reference
        self.reference = load_causal_lm(reference, dtype=dtype, device=self.device)
        self.load_policy(policy)

    def load_policy(self, policy: str) -> None:
        self.policy = load_causal_lm(policy, dtype=self.dtype, device=self.device)
        vp = self.policy.get_output_embeddings().weight.shape[0]
        vr = self.reference.get_output_embeddings().weight.shape[0]
        if vp != vr:
            raise ValueError(f"policy '{policy}' ({vp} tokens) and reference '{self.reference_name}' ({vr} tokens) "
                             "do not share a vocabulary; KL needs the same tokenizer")

    @torch.no_grad()
    def kl(self, exp: Experience) -> dict[str, list[float]]:
        e = exp.to(self.device)
        lp_all = self.policy(input_ids=e.sequences, attention_mask=e.attention_mask).logits[:, :-1]
        lq_all = self.reference(input_ids=e.sequences, attention_mask=e.attention_mask).logits[:, :-1]
        targets = e.sequences[:, 1:]
        out = {"seq": [], "logratio": [], "tokens": []}
        for b in range(len(exp)):  # one row at a time bounds the fp32 [T, V] copies
            mask = e.action_mask[b].bool()
            lp = torch.log_softmax(lp_all[b][mask].float(), -1)
            lq = torch.log_softmax(lq_all[b][mask].float(), -1)
            tok = targets[b][mask].unsqueeze(-1)
            out["seq"].append(float((lp.exp() * (lp - lq)).sum()))
            out["logratio"].append(float((lp.gather(-1, tok) - lq.gather(-1, tok)).sum()))
            out["tokens"].append(float(mask.sum()))
        return out

    def ping(self) -> bool:
        return True


class KLSuite(Suite):
    name = "kl"
    description = "exact token-level KL(policy || reference) along the responses"

    def missing(self, ctx: Context) -> str | None:
        return None if ctx.cfg.reference else "no reference model given"

    def run(self, ctx: Context) -> dict[str, Metric]:
        cfg = ctx.cfg
        actor = ctx.services.get("kl")
        own = actor is None
        if own:
            res = cfg.resources.kl
            actor = ray.remote(KLWorker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
                ctx.model, cfg.reference, dtype=cfg.dtype,
                torch_threads=torch_threads(cfg) if res.num_gpus == 0 else None)
        try:
            parts = ray.get([actor.kl.remote(exp) for exp in ctx.gen.experiences])
        finally:
            if own:
                ray.kill(actor)
        seq = [x for p in parts for x in p["seq"]]
        lr = [x for p in parts for x in p["logratio"]]
        ntok = [x for p in parts for x in p["tokens"]]
        return {
            "kl/seq": Metric(seq),
            "kl/token": Metric([s / n if n else 0.0 for s, n in zip(seq, ntok)], ntok),
            "kl/logratio": Metric(lr),
        }
