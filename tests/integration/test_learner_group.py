"""The DeepSpeed learner group for real: 2 Ray actors forming one ZeRO-2 / ZeRO-3 job on CPU (gloo).

One group per ZeRO stage serves every test of this module (start-up dominates on CPU); the tests
read the weights they need from the group itself, so their order does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import ray
import torch
import torch.nn.functional as F
from ray.util.placement_group import placement_group
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.buckets import PackedBucket
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.rollout import TrainGroup

pytestmark = pytest.mark.slow

RANKS = 2
BETA = 0.1
DPO = AlgorithmConfig(loss="dpo", beta=BETA)
LEARNER = dict(lr=2e-3, warmup_steps=2, micro_batch_size=2, grad_accum=2)
ODD_SIZES = dict(hidden_size=65, head_dim=32, intermediate_size=70)  # odd-sized: uneven ZeRO-3 shards


@dataclass(frozen=True)
class Case:
    zero_stage: int
    model_dir: str


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3-odd-sizes"])
def case(request, tiny_model_dir, tmp_path_factory) -> Case:
    """ZeRO-2 on the tiny model; ZeRO-3 on a resized copy (embeddings, norms of odd size: uneven shards)."""
    if request.param == 2:
        return Case(2, tiny_model_dir)
    odd_dir = str(tmp_path_factory.mktemp("odd"))
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.update(ODD_SIZES)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(odd_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(odd_dir)
    return Case(3, odd_dir)


@pytest.fixture(scope="module")
def learner(case, ray_session) -> LearnerGroup:
    placement = Placement(ClusterConfig(learner_ranks=RANKS))
    # Unnamed bundles: a session-wide Placement (the generation pool's) may already hold the
    # name `apo-learner-0`, and Ray refuses a second placement group of the same name.
    bundles = placement_group([{"CPU": 1.0}] * RANKS, strategy="PACK")
    ray.get(bundles.ready())
    placement.groups["learner"] = [bundles]
    group = LearnerGroup(
        ModelConfig(path=case.model_dir),
        LearnerConfig(zero_stage=case.zero_stage, **LEARNER),
        DPO,
        placement,
        total_steps=100,
    )
    yield group
    group.shutdown()
    placement.remove()


@pytest.fixture(scope="module")
def make_groups(case) -> Callable[..., list[TrainGroup]]:
    """make_groups(n, k, seed): n groups of k candidates of random token ids (prompts of 2-6,
    responses of 1-6 tokens), preferred = index mod k."""
    vocab_size = AutoConfig.from_pretrained(case.model_dir).vocab_size

    def make(n: int, k: int, seed: int) -> list[TrainGroup]:
        g = torch.Generator().manual_seed(seed)

        def tokens(low: int, high: int) -> list[int]:
            length = int(torch.randint(low, high + 1, (1,), generator=g))
            return torch.randint(0, vocab_size, (length,), generator=g).tolist()

        return [TrainGroup(tokens(2, 6), [tokens(1, 6) for _ in range(k)], preferred=i % k) for i in range(n)]

    return make


def with_refs(learner: LearnerGroup, groups: list[TrainGroup]) -> list[TrainGroup]:
    for group, refs in zip(groups, learner.compute_logps(groups)):
        group.ref_logps = refs
    return groups


def streamed_buckets(learner: LearnerGroup, bucket_bytes: int) -> list[PackedBucket]:
    """Rank 0's `stream_weight_buckets` (a Ray streaming generator) while the other ranks join the
    gathers, as the weight sync runs them; every other rank joined as many gathers as rank 0 sent."""
    streamed = learner.ranks[0].stream_weight_buckets.options(num_returns="streaming").remote(bucket_bytes)
    joins = [rank.join_weight_gathers.remote(bucket_bytes) for rank in learner.ranks[1:]]
    buckets = [ray.get(ref) for ref in streamed]
    assert ray.get(joins) == [len(buckets)] * (RANKS - 1)
    return buckets


def full_weights(learner: LearnerGroup, bucket_bytes: int = 1 << 20) -> dict[str, torch.Tensor]:
    return {name: t.clone() for bucket in streamed_buckets(learner, bucket_bytes) for name, t in bucket.tensors()}


def hf_model(model_dir: str, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def sequence_logp(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Summed log-prob of `response` after `prompt`, unpadded, with gradient."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(response)[:, None]).sum()


def test_compute_logps_match_transformers_in_input_order(
    learner, make_groups, case, hf_reference, one_torch_thread
):
    groups = make_groups(5, 3, seed=1)  # 15 sequences: unequal shards, a dummy forward on one rank
    model = hf_model(case.model_dir, full_weights(learner))
    got = learner.compute_logps(groups)
    want = [[hf_reference.logprob(model, g.prompt_ids, c, 1.0) for c in g.candidate_ids] for g in groups]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-5)
    assert learner.compute_logps(groups[::-1]) == [pytest.approx(row, abs=1e-5) for row in got[::-1]]


def test_train_step_equals_a_plain_torch_mean_loss(learner, make_groups, case, one_torch_thread):
    groups = with_refs(learner, make_groups(5, 2, seed=2))  # K = 2: the other candidate is the negative
    model = hf_model(case.model_dir, full_weights(learner))
    losses = []
    for g in groups:
        rejected = 1 - g.preferred
        h = (sequence_logp(model, g.prompt_ids, g.candidate_ids[g.preferred]) - g.ref_logps[g.preferred]) - (
            sequence_logp(model, g.prompt_ids, g.candidate_ids[rejected]) - g.ref_logps[rejected]
        )
        losses.append(-F.logsigmoid(BETA * h))
    loss = torch.stack(losses).mean()
    loss.backward()
    grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    metrics = learner.train_step(groups)
    assert metrics["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert metrics["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    assert metrics["mc/entropy"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["perf/pairs_per_s"] > 0 and metrics["perf/tokens_per_s"] > 0


def test_dpo_steps_lower_the_loss_and_raise_the_margin(learner, make_groups):
    groups = with_refs(learner, make_groups(8, 2, seed=3))
    algorithm = DPO.model_copy(update={"dynamics_every": 2})
    history = [learner.train_step(groups, algorithm) for _ in range(6)]
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    assert history[-1]["loss"] < history[0]["loss"] - 0.02
    assert history[-1]["margin"] > history[0]["margin"] + 0.2
    assert history[-1]["accuracy"] > 0.5
    with_dynamics = [h for h in history if "dyn/pos_norm" in h]
    assert len(with_dynamics) == 3 and all(h["dyn/pos_norm"] > 0 and h["dyn/neg_norm"] > 0 for h in with_dynamics)


def test_rnce_with_two_mc_negatives(learner, make_groups):
    groups = with_refs(learner, make_groups(6, 4, seed=4))
    algorithm = AlgorithmConfig(loss="rnce", beta=BETA, negatives="mc", num_negatives=2)
    metrics = [learner.train_step(groups, algorithm) for _ in range(2)]
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
    assert 0.0 < metrics[0]["mc/entropy"] <= math.log(3) + 1e-6
    assert metrics[0]["loss"] == pytest.approx(math.log(3), abs=1e-4)  # policy = reference: uniform over 1 + M


def test_checkpoint_restores_weights_optimizer_and_schedule(learner, make_groups, tmp_path):
    groups = with_refs(learner, make_groups(4, 3, seed=5))
    learner.train_step(groups)
    learner.save_checkpoint(str(tmp_path), "ckpt", {"segment": 7})
    saved = full_weights(learner)
    after_save = [learner.train_step(groups) for _ in range(2)]
    assert not torch.equal(full_weights(learner)["lm_head.weight"], saved["lm_head.weight"])
    assert learner.load_checkpoint(str(tmp_path), "ckpt") == {"segment": 7}
    restored = full_weights(learner)
    assert restored.keys() == saved.keys() and all(torch.equal(restored[k], saved[k]) for k in saved)
    after_load = [learner.train_step(groups) for _ in range(2)]
    keys = ("loss", "lr", "grad_norm", "mc/entropy")  # K = 3: the kernel's draws depend on the step too
    assert [[m[k] for k in keys] for m in after_save] == [[m[k] for k in keys] for m in after_load]


def test_export_hf_round_trips_through_from_pretrained(
    learner, make_groups, case, tmp_path, one_torch_thread
):
    learner.train_step(with_refs(learner, make_groups(4, 2, seed=6)))
    weights = full_weights(learner)
    learner.export_hf(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert all(torch.equal(model.state_dict()[name], t) for name, t in weights.items())
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(weights)
    exported = AutoTokenizer.from_pretrained(str(tmp_path))
    source = AutoTokenizer.from_pretrained(case.model_dir)
    assert exported.get_vocab() == source.get_vocab() and exported.pad_token == source.pad_token


def test_extrapolate_is_exact_and_survives_a_zero_lr_step(learner, make_groups):
    groups = with_refs(learner, make_groups(4, 2, seed=7))
    learner.snapshot_weights()
    previous = full_weights(learner)
    for _ in range(2):
        learner.train_step(groups)
    trained = full_weights(learner)
    learner.extrapolate(0.5)
    extrapolated = full_weights(learner)
    for name, theta in trained.items():
        torch.testing.assert_close(extrapolated[name], theta + 0.5 * (theta - previous[name]), rtol=1e-6, atol=1e-7)
    learner.new_iteration(total_steps=10)  # warm-up restarts: lr 0 at the first step, Adam state reset
    assert learner.train_step(groups)["lr"] == 0.0
    stepped = full_weights(learner)
    assert all(torch.equal(stepped[name], extrapolated[name]) for name in extrapolated)  # masters followed
    learner.extrapolate(0.5)  # the next reference is the pre-extrapolation weights
    again = full_weights(learner)
    expected = 1.5 * stepped["lm_head.weight"] - 0.5 * trained["lm_head.weight"]
    torch.testing.assert_close(again["lm_head.weight"], expected)


def test_streamed_buckets_cover_every_parameter_once(learner, case):
    model = AutoModelForCausalLM.from_pretrained(case.model_dir)
    expected = {name: p.shape for name, p in model.named_parameters()}
    buckets = streamed_buckets(learner, 64 << 10)
    names = [name for bucket in buckets for name in bucket.names]
    assert len(buckets) > 1 and len(names) == len(set(names)) and set(names) == set(expected)
    assert all(tuple(t.shape) == tuple(expected[n]) for b in buckets for n, t in b.tensors())


def test_reference_weights_are_kept_swapped_in_and_checkpointed(learner, make_groups, tmp_path):
    """`compute_logps(..., weights=...)` runs under the kept copy after training moved the weights,
    puts the training weights back bit for bit, exports the copy, and a checkpoint restores it."""
    groups = with_refs(learner, make_groups(4, 2, seed=8))
    learner.keep_weights("reference")
    kept = full_weights(learner)
    before = learner.compute_logps(groups)
    assert learner.compute_logps(groups, weights="reference") == before  # nothing moved yet: no swap
    for _ in range(2):
        learner.train_step(groups)
    trained = full_weights(learner)
    assert learner.compute_logps(groups) != before
    assert learner.compute_logps(groups, weights="reference") == [pytest.approx(row, abs=1e-6) for row in before]
    after = full_weights(learner)
    assert all(torch.equal(after[k], trained[k]) for k in trained)  # swapped back exactly
    learner.export_hf(str(tmp_path / "kept"), weights="reference")
    exported = load_file(str(tmp_path / "kept" / "model.safetensors"))
    assert all(torch.equal(exported[k], kept[k]) for k in kept)
    learner.save_checkpoint(str(tmp_path), "ckpt")
    learner.drop_weights("reference")
    with pytest.raises(ray.exceptions.RayTaskError, match="no kept weights named 'reference'"):
        learner.compute_logps(groups, weights="reference")
    learner.load_checkpoint(str(tmp_path), "ckpt")
    assert learner.compute_logps(groups, weights="reference") == [pytest.approx(row, abs=1e-6) for row in before]
    learner.drop_weights("reference")


def test_bco_delta_is_the_running_mean_of_every_reward_and_survives_a_checkpoint(learner, make_groups, tmp_path):
    bco = AlgorithmConfig(loss="bco", beta=BETA)
    groups = with_refs(learner, make_groups(4, 2, seed=9))  # 2 groups per rank: one micro-batch each
    learner.save_checkpoint(str(tmp_path), "start")
    for _ in range(3):  # past the warm-up: the policy moves away from the reference, rewards become non-zero
        learner.train_step(groups)
    first = learner.train_step(groups, bco)
    learner.save_checkpoint(str(tmp_path), "one")
    second = learner.train_step(groups, bco)
    # one all-reduced update per step over both ranks' 8 rewards: delta = mean of every reward seen
    assert first["bco/delta"] == pytest.approx(first["bco/reward_mean"], abs=1e-6) and first["bco/delta"] != 0
    assert second["bco/delta"] == pytest.approx((first["bco/reward_mean"] + second["bco/reward_mean"]) / 2, abs=1e-6)
    learner.load_checkpoint(str(tmp_path), "one")
    again = learner.train_step(groups, bco)
    assert again["bco/delta"] == pytest.approx(second["bco/delta"], abs=1e-9)
    assert again["loss"] == pytest.approx(second["loss"], abs=1e-6)
    learner.load_checkpoint(str(tmp_path), "start")


def test_dynamics_g_against_targets_equals_a_plain_torch_inner_product(learner, make_groups, case, one_torch_thread):
    groups = with_refs(learner, make_groups(4, 2, seed=10))
    targets = [(g.prompt_ids, g.candidate_ids[0]) for g in make_groups(3, 2, seed=11)]
    learner.set_dynamics_targets(targets)
    model = hf_model(case.model_dir, full_weights(learner))
    params = [p for p in model.parameters()]
    tokens = sum(len(r) for _, r in targets)
    nll = -sum(sequence_logp(model, p, r) for p, r in targets) / tokens
    target_grad = torch.autograd.grad(nll, params)
    losses = []
    for g in groups:
        h = (sequence_logp(model, g.prompt_ids, g.candidate_ids[g.preferred]) - g.ref_logps[g.preferred]) - (
            sequence_logp(model, g.prompt_ids, g.candidate_ids[1 - g.preferred]) - g.ref_logps[1 - g.preferred]
        )
        losses.append(-F.logsigmoid(BETA * h))
    loss_grad = torch.autograd.grad(torch.stack(losses).mean(), params)
    want = sum(float((a.double() * b.double()).sum()) for a, b in zip(loss_grad, target_grad))
    metrics = learner.train_step(groups, DPO.model_copy(update={"dynamics_every": 1}))
    assert metrics["dyn/G_total"] == pytest.approx(want, rel=1e-3, abs=1e-9)
    assert metrics["dyn/G_total"] == pytest.approx(metrics["dyn/G_pos"] + metrics["dyn/G_neg"], rel=1e-9)
    assert sum(metrics[f"dyn/{t}/loss_share"] for t in ("top", "mid", "bot")) == pytest.approx(1.0)
    learner.set_dynamics_targets([])
