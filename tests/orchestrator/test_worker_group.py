"""A worker group of 2 FSDP2 ranks (gloo, CPU) takes the same optimizer steps
as one unsharded process on the whole batch: same losses, same weights after
3 steps (fp32), for SFT, DPO and PPO with a critic; the same EWC importances
and penalties; and its sharded checkpoint resumes on 2 ranks and on 1.

The 1-process side is a plain ``PolicyWorker`` in the test process; the
2-rank side is the real path: Ray actors, ``WorkerGroup.rendezvous``, the
driver's dispatch (``orchestrator/dispatch.py``) with global loss units.
"""

from __future__ import annotations

import random

import pytest
import torch

from hbat.actors.critic import CriticWorker
from hbat.actors.policy import LossPart, PolicyWorker
from hbat.actors.rollout import build_experience
from hbat.models import load_tokenizer
from hbat.orchestrator.config import EWCConfig, OptimConfig
from hbat.orchestrator.data import collate_pairwise, collate_sft
from hbat.orchestrator.dispatch import split_parts
from hbat.orchestrator.worker_group import GroupCall, WorkerGroup

PROMPT = 4
ATOL = 1e-5  # fp32 reduction order differs (2 partial sums vs 1); Adam steps are lr=1e-3..2e-3


@pytest.fixture(scope="module")
def pad(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint).pad_token_id


def _row(rng, n_resp, vocab=200):
    ids = [rng.randrange(5, vocab) for _ in range(PROMPT + n_resp)]
    return ids, [0] * PROMPT + [1] * n_resp


def sft_batch(pad, seed, rows=6):
    rng = random.Random(seed)
    return collate_sft([dict(zip(("input_ids", "loss_mask"), _row(rng, 2 + (i * 3 + seed) % 5))) for i in range(rows)],
                       pad)


def pair_batch(pad, seed, n_pairs=4):
    rng = random.Random(100 + seed)
    ex = []
    for i in range(n_pairs):
        c, cm = _row(rng, 3 + (i + seed) % 3)
        r, rm = _row(rng, 6 - i % 3)
        r[:PROMPT] = c[:PROMPT]
        ex.append({"chosen_input_ids": c, "chosen_loss_mask": cm, "rejected_input_ids": r, "rejected_loss_mask": rm})
    return collate_pairwise(ex, pad)


def experience(pad, seed, n=8):
    rng = random.Random(200 + seed)
    prompts = [[rng.randrange(5, 200) for _ in range(PROMPT)] for _ in range(n // 2)]
    responses = [[[rng.randrange(5, 200) for _ in range(2 + (j + i) % 4)] for j in range(2)] for i in range(n // 2)]
    return build_experience(prompts, responses, pad)


def group(ray, cls, model, n=2, **kw) -> WorkerGroup:
    actors = [ray.remote(cls).options(num_cpus=0.1).remote(model, seed=0, torch_threads=1, shard=True, **kw)
              for _ in range(n)]
    g = WorkerGroup(cls.__name__, actors)
    g.rendezvous(timeout_s=120)
    return g


def kill(ray, *groups):
    for g in groups:
        for a in g.actors:
            ray.kill(a)


def assert_same_weights(plain: "PolicyWorker", sharded: dict):
    """The unsharded worker's weights equal ``sharded``, and they moved from the start."""
    weights = plain.export_weights()[1]
    assert weights.keys() == sharded.keys()
    worst = max(float((weights[k] - sharded[k]).abs().max()) for k in weights)
    assert worst < ATOL, f"weights differ by up to {worst:.2e}"
    moved = max(float((weights[k] - v).abs().max()) for k, v in plain.start_weights.items())
    assert moved > 1e-4, "the steps did not move the weights: the comparison would be vacuous"


@pytest.fixture
def plain(tiny_checkpoint):
    w = PolicyWorker(tiny_checkpoint, seed=0, torch_threads=1)
    w.start_weights = w.export_weights()[1]
    return w


@pytest.mark.parametrize("fsdp", [{}, {"cpu_offload": True, "reshard_after_forward": False}],
                         ids=["default", "offload-noreshard"])
def test_sft_and_dpo_steps_match_one_process(ray_local, tiny_checkpoint, pad, plain, fsdp):
    ray = ray_local
    g = group(ray, PolicyWorker, tiny_checkpoint, fsdp=fsdp)
    try:
        optim = OptimConfig(lr=1e-3, grad_accum=2)
        for w in (plain, g):
            (w.begin_phase if w is plain else lambda *a: g.run("begin_phase", *a))("sft", optim, 6)
        for step in range(3):
            part = LossPart("sft", sft_batch(pad, step))
            a, b = plain.train_step([part]), g.train([part], optim).get()
            assert a["sft/loss"] == pytest.approx(b["sft/loss"], rel=1e-5, abs=1e-6)
            assert a["optim/grad_norm"] == pytest.approx(b["optim/grad_norm"], rel=1e-4)
        # a DPO step in the same phase, reference log-probs from the start weights
        for step in range(3):
            batch = pair_batch(pad, step)
            batch["ref_logps"] = torch.zeros(batch["input_ids"].shape[0]) - 5.0
            part = LossPart("pairwise", batch, options={"loss": "dpo", "beta": 0.1})
            a, b = plain.train_step([part]), g.train([part], optim).get()
            assert a["pref/loss"] == pytest.approx(b["pref/loss"], rel=1e-5, abs=1e-6)
        assert_same_weights(plain, g.run("export_weights")[1])
    finally:
        kill(ray, g)


def test_ppo_policy_and_critic_match_one_process(ray_local, tiny_checkpoint, pad, plain):
    ray = ray_local
    g = group(ray, PolicyWorker, tiny_checkpoint)
    cg = group(ray, CriticWorker, tiny_checkpoint)
    critic = CriticWorker(tiny_checkpoint, seed=0, torch_threads=1)
    try:
        optim = OptimConfig(lr=1e-3)
        plain.begin_phase("preference", optim, 3)
        g.run("begin_phase", "preference", optim, 3)
        critic.configure(optim, 3)
        critic.begin_phase()
        cg.run("configure", optim, 3)
        cg.run("begin_phase")
        for step in range(3):
            exp = experience(pad, step)
            # old-policy log-probs and values from each side's own forward, split over ranks
            lp_plain, lp_group = plain.logprobs(exp), g.map_rows("logprobs", exp).get()
            torch.testing.assert_close(lp_plain, lp_group, atol=ATOL, rtol=0)
            v_plain, v_group = critic.values(exp), cg.map_rows("values", exp).get()
            torch.testing.assert_close(v_plain, v_group, atol=ATOL, rtol=0)
            gen = torch.Generator().manual_seed(step)
            adv = torch.randn(exp.action_mask.shape, generator=gen) * exp.action_mask
            ret = (v_plain + torch.randn(exp.action_mask.shape, generator=gen)) * exp.action_mask
            exp = exp.with_fields(logprobs=lp_plain, advantages=adv, values=v_plain, returns=ret)
            part = LossPart("ppo", exp, options={"clip_eps": 0.2})
            a, b = plain.train_step([part]), g.train([part], optim).get()
            assert a["ppo/policy_loss"] == pytest.approx(b["ppo/policy_loss"], rel=1e-5, abs=1e-6)
            ca = critic.train_step(exp, 0.2)
            cb = cg.train_rows("train_step", exp, int(exp.action_mask.sum()), 0.2).get()
            assert ca["critic/value_loss"] == pytest.approx(cb["critic/value_loss"], rel=1e-5)
        assert_same_weights(plain, g.run("export_weights")[1])
        torch.testing.assert_close(critic.values(exp), cg.map_rows("values", exp).get(), atol=ATOL, rtol=0)
    finally:
        kill(ray, g, cg)


def _ewc_phases(w, run, train, pad, ewc):
    """An EWC-recording SFT phase, then a DPO phase anchored to it; returns the stats."""
    optim = OptimConfig(lr=2e-3)
    run("begin_phase", "sft", optim, 2, None, ewc)
    for step in range(2):
        train([LossPart("sft", sft_batch(pad, step))], optim)
    fisher = [LossPart("sft", sft_batch(pad, 10 + k)) for k in range(2)] if ewc.method == "fisher" else None
    end = w(fisher)
    run("begin_phase", "preference", optim, 2, "sft", None)
    pens = []
    for step in range(2):
        batch = pair_batch(pad, step)
        batch["ref_logps"] = torch.zeros(batch["input_ids"].shape[0]) - 5.0
        pens.append(train([LossPart("pairwise", batch, options={"loss": "dpo", "beta": 0.1})], optim)["ewc/penalty"])
    return end, pens


@pytest.mark.parametrize("method", ["modified", "fisher"])
def test_ewc_importances_and_penalty_match_one_process(ray_local, tiny_checkpoint, pad, plain, method):
    ray = ray_local
    g = group(ray, PolicyWorker, tiny_checkpoint)
    ewc = EWCConfig(method=method, strength=50.0, normalize="softmax", max_weight=3.0)
    try:
        end_a, pens_a = _ewc_phases(lambda f: plain.end_phase(f), lambda m, *a: getattr(plain, m)(*a),
                                    lambda parts, o: plain.train_step(parts), pad, ewc)

        def group_end(fisher):
            if not fisher:
                return g.run("end_phase", None)
            return GroupCall([a.end_phase.remote(p) for a, p in zip(g.actors, split_parts(fisher, 2))]).get()

        end_b, pens_b = _ewc_phases(group_end, g.run, lambda parts, o: g.train(parts, o).get(), pad, ewc)
        assert end_a == pytest.approx(end_b, rel=1e-6)
        wa, wb = plain.anchor_weights("sft"), g.run("anchor_weights", "sft")
        assert wa.keys() == wb.keys() and len(set(round(v, 6) for v in wa.values())) > 1  # weights differ per tensor
        for k in wa:
            assert wa[k] == pytest.approx(wb[k], rel=1e-6, abs=1e-12), k
        assert pens_a[1] > 0
        assert pens_a == pytest.approx(pens_b, rel=1e-5)
        assert plain.ewc_penalty("sft") == pytest.approx(g.run("ewc_penalty", "sft"), rel=1e-5)
        assert_same_weights(plain, g.run("export_weights")[1])
    finally:
        kill(ray, g)


def test_sharded_checkpoint_resumes_on_two_ranks_and_on_one(ray_local, tiny_checkpoint, pad, plain, tmp_path):
    """Mid-phase (optimizer state, an anchor, a phase-start snapshot): 2 ranks write,
    a fresh 2-rank group and a single process read, and the next step is the same."""
    ray = ray_local
    g = group(ray, PolicyWorker, tiny_checkpoint)
    ewc = EWCConfig(method="modified", strength=20.0)
    optim = OptimConfig(lr=2e-3)
    try:
        g.run("begin_phase", "sft", optim, 4, None, ewc)
        g.train([LossPart("sft", sft_batch(pad, 0))], optim).get()
        g.run("end_phase", None)
        g.run("begin_phase", "preference", optim, 4, "sft", ewc)
        batch = pair_batch(pad, 0)
        batch["ref_logps"] = torch.zeros(batch["input_ids"].shape[0]) - 5.0
        part = LossPart("pairwise", batch, options={"loss": "dpo", "beta": 0.1})
        g.train([part], optim).get()
        ckpt = tmp_path / "policy"
        g.run("save_state", str(ckpt))
        assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        saved = g.run("export_weights")[1]
        nxt = LossPart("pairwise", pair_batch(pad, 1) | {"ref_logps": batch["ref_logps"]},
                       options={"loss": "dpo", "beta": 0.1})
        after = g.train([nxt], optim).get()
        want = g.run("export_weights")[1]

        g2 = group(ray, PolicyWorker, tiny_checkpoint)
        try:
            g2.run("load_state", str(ckpt))
            for k, v in g2.run("export_weights")[1].items():
                assert torch.equal(v, saved[k]), k
            again = g2.train([nxt], optim).get()
            assert again["ewc/penalty"] == after["ewc/penalty"] and again["pref/loss"] == after["pref/loss"]
            for k, v in g2.run("export_weights")[1].items():
                assert torch.equal(v, want[k]), k
        finally:
            kill(ray, g2)

        plain.load_state(str(ckpt))
        for k, v in plain.export_weights()[1].items():
            assert torch.equal(v, saved[k]), k
        one = plain.train_step([nxt])
        assert one["ewc/penalty"] == pytest.approx(after["ewc/penalty"], rel=1e-5)
        assert_same_weights(plain, want)
    finally:
        kill(ray, g)


def test_dispatch_splits_pairs_and_counts_global_units(pad):
    batch = pair_batch(pad, 0, n_pairs=5)
    ranks = split_parts([LossPart("pairwise", batch)], 2, grad_accum=4)
    sizes = [p[0].batch["input_ids"].shape[0] // 2 for p in ranks]
    assert sizes == [2, 3] or sizes == [3, 2]
    assert all(p[0].total_units == 5 for p in ranks)
    assert all(p[0].micro_batches == 2 for p in ranks)  # capped by the smaller slice's pairs
    # chosen rows stay with their rejected rows: [chosen | rejected] in each slice
    first = ranks[0][0].batch
    n = first["input_ids"].shape[0] // 2
    assert torch.equal(first["input_ids"][:n], batch["input_ids"][:n])
    assert torch.equal(first["input_ids"][n:], batch["input_ids"][5:5 + n])
    # a token budget raises the micro-batch count
    sft = sft_batch(pad, 0, rows=8)
    budget = sft["input_ids"].shape[1] * 2  # two rows per micro-batch
    (r0, *_), _ = split_parts([LossPart("sft", sft)], 2, grad_accum=1, max_tokens=budget)
    assert r0.micro_batches == 2 and r0.total_units == int(sft["loss_mask"][:, 1:].sum())
    with pytest.raises(ValueError, match="every rank needs at least one"):
        split_parts([LossPart("sft", sft_batch(pad, 0, rows=1))], 2)


def test_reward_model_training_matches_one_process_and_exports_whole(ray_local, tiny_checkpoint, pad, tmp_path):
    """Bradley-Terry steps on 2 ranks (the reward stage's group) = on one process;
    the gathered export of the sharded model equals the unsharded one's."""
    from safetensors.torch import load_file

    from hbat.actors.reward import RewardWorker

    ray = ray_local
    plain = RewardWorker(tiny_checkpoint, trainable=True, seed=0, torch_threads=1)
    g = group(ray, RewardWorker, tiny_checkpoint, trainable=True)
    try:
        optim = OptimConfig(lr=2e-3)
        plain.begin_training(optim, 3)
        g.run("begin_training", optim, 3)
        for step in range(3):
            batch = pair_batch(pad, step)
            a = plain.train_step(batch)
            b = g.train_rows("train_step", batch, batch["input_ids"].shape[0] // 2, paired=True).get()
            assert a["rm/loss"] == pytest.approx(b["rm/loss"], rel=1e-5)
            assert a["rm/grad_norm"] == pytest.approx(b["rm/grad_norm"], rel=1e-4)
        g.run("end_training")
        plain.end_training()
        batch = pair_batch(pad, 9)
        torch.testing.assert_close(plain.score_batch(batch), g.map_rows("score_batch", batch).get(), atol=ATOL, rtol=0)
        plain.save_pretrained(str(tmp_path / "plain"))
        g.run("save_pretrained", str(tmp_path / "sharded"))
        a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "sharded" / "model.safetensors")
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < ATOL
    finally:
        kill(ray, g)
