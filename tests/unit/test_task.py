"""Fast tests of the built-in task: prompts, r*, demonstrations, tokenizer, tiny model, judge."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.task import (
    BradleyTerryRewardJudge,
    SyntheticTask,
    TinyModelSettings,
    build_tiny_model,
    build_tokenizer,
    is_builtin_model,
    latent_reward,
    load_reward_fn,
    random_tiny_model,
    resolve_model,
)
from apo_pipeline.task.synthetic import parse_digits
from apo_pipeline.task.tokenizer import EOS, PAD

PROMPT = "reverse:31415="


# ---- synthetic task -------------------------------------------------------------------------


def test_prompts_are_deterministic_by_seed_and_splits_are_disjoint() -> None:
    train = SyntheticTask(7).prompts(300, "train")
    assert train == SyntheticTask(7).prompts(300, "train")
    assert train != SyntheticTask(8).prompts(300, "train")
    evals = SyntheticTask(7).prompts(300, "eval")
    assert len(set(train)) == len(train) == 300
    assert not set(train) & set(evals)
    task = SyntheticTask(7)
    assert all(task.split_of(parse_digits(p)) == "eval" for p in evals)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticTask(0).prompts(3, "test")


def test_ideal_response_scores_one() -> None:
    task = SyntheticTask(0)
    assert task.ideal(PROMPT) == "51413"
    for prompt in task.prompts(50, "eval"):
        assert task.reward(prompt, task.ideal(prompt)) == 1.0


def test_reward_is_graded_and_whitespace_insensitive() -> None:
    assert latent_reward(PROMPT, "5 1 4 1 3") == 1.0
    assert latent_reward(PROMPT, "51410") == pytest.approx(0.8)
    assert latent_reward(PROMPT, "51000") == pytest.approx(0.4)
    assert latent_reward(PROMPT, "5141") == pytest.approx(0.8 - 0.1)
    assert 0.0 < latent_reward(PROMPT, "51400") < latent_reward(PROMPT, "51410") < 1.0


def test_length_and_repetition_hacks_do_not_pay() -> None:
    assert latent_reward(PROMPT, "514135") < 1.0
    assert latent_reward(PROMPT, "51413" * 4) < 0.0
    assert latent_reward(PROMPT, "55555") == pytest.approx(0.2)
    assert latent_reward(PROMPT, "The answer is 51413") < 0.0
    assert latent_reward(PROMPT, "") == pytest.approx(-0.5)
    assert latent_reward(PROMPT, "1" * 200) == -1.0


def test_reward_reads_the_last_user_message_of_a_conversation() -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    assert latent_reward(chat, "51413") == 1.0


def test_prompt_without_digits_is_an_error() -> None:
    with pytest.raises(ValueError, match="no digits"):
        latent_reward("hello", "x")


def test_demonstrations_are_fluent_but_systematically_wrong() -> None:
    task = SyntheticTask(3)
    conf = task.confusion
    assert all(conf.wrong[d] != d for d in conf.wrong)
    assert sum(q > 0.5 for q in conf.q.values()) == 4
    rng = np.random.default_rng(0)
    prompts = task.prompts(400, "train")
    demos = [task.demonstration(p, rng) for p in prompts]
    assert all(d.isdigit() for d in demos)
    rewards = [task.reward(p, d) for p, d in zip(prompts, demos)]
    assert 0.4 < np.mean(rewards) < 0.8
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert [task.demonstration(p, rng_a) for p in prompts[:20]] == [
        task.demonstration(p, rng_b) for p in prompts[:20]
    ]


# ---- tokenizer --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [PROMPT, "51413", "free text, héllo\nworld 42"])
def test_tokenizer_round_trip(text: str) -> None:
    tok = build_tokenizer()
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_task_tokens_and_specials() -> None:
    tok = build_tokenizer()
    tokens = tok.convert_ids_to_tokens(tok(PROMPT)["input_ids"])
    assert tokens == ["reverse", ":", "3", "1", "4", "1", "5", "="]
    assert tok.pad_token == PAD and tok.eos_token == EOS and tok.pad_token_id != tok.eos_token_id
    assert (
        tok.decode(tok("51413")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True)
        == "51413"
    )


def test_chat_template() -> None:
    tok = build_tokenizer()
    messages = [{"role": "user", "content": PROMPT}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert tok.decode(ids) == text


# ---- tiny model -------------------------------------------------------------------------------


def test_saved_model_reloads_with_the_same_tokenizer(tmp_path) -> None:
    path = random_tiny_model(tmp_path / "m", seed=1)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (path / name).is_file()
    reloaded = AutoTokenizer.from_pretrained(path)
    built = build_tokenizer()
    for text in (PROMPT, "free text, héllo 42", "<|im_start|>user\nx<|im_end|>"):
        assert reloaded(text)["input_ids"] == built(text)["input_ids"]
    assert reloaded.chat_template == built.chat_template
    model = AutoModelForCausalLM.from_pretrained(path)
    config = model.config
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.num_key_value_heads == 1 and not config.tie_word_embeddings
    assert model.dtype == torch.float32 and config.vocab_size == len(built)


def test_settings_require_head_dim_64() -> None:
    with pytest.raises(ValueError, match="head_dim 64"):
        TinyModelSettings(hidden_size=96, num_heads=2)


def test_short_warmup_is_deterministic_and_cached(tmp_path) -> None:
    small = TinyModelSettings(warmup_steps=3, batch_size=8)
    first = build_tiny_model(cache_dir=tmp_path / "a", seed=5, settings=small)
    second = build_tiny_model(cache_dir=tmp_path / "b", seed=5, settings=small)
    assert first.name == second.name
    wa, wb = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = build_tiny_model(cache_dir=tmp_path / "a", seed=6, settings=small)
    assert other != first
    assert not torch.equal(
        load_file(other / "model.safetensors")["lm_head.weight"], wa["lm_head.weight"]
    )
    start = time.perf_counter()
    again = build_tiny_model(cache_dir=tmp_path / "a", seed=5, settings=small)
    assert again == first and time.perf_counter() - start < 0.5
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == sorted(
        [first.name, other.name]
    )


def test_resolve_model(tmp_path) -> None:
    assert is_builtin_model("builtin:tiny") and not is_builtin_model("builtin:huge")
    with pytest.raises(ValueError, match="builtin:huge"):
        resolve_model("builtin:huge")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        resolve_model(str(missing))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    path = random_tiny_model(tmp_path / "m")
    assert resolve_model(str(path)) == path


# ---- reward judge -----------------------------------------------------------------------------


def test_judge_prob_mode_is_bradley_terry() -> None:
    judge = BradleyTerryRewardJudge(latent_reward, scale=4.0)
    ra, rb = latent_reward(PROMPT, "51413"), latent_reward(PROMPT, "51000")
    assert judge.prob(PROMPT, "51413", "51000") == pytest.approx(
        1 / (1 + math.exp(-4.0 * (ra - rb)))
    )
    assert judge.prob(PROMPT, "51413", "51000") + judge.prob(
        PROMPT, "51000", "51413"
    ) == pytest.approx(1.0)
    assert judge.compare(PROMPT, "51413", "51413") == pytest.approx(0.5)


def test_judge_sample_mode_is_deterministic_and_order_independent() -> None:
    items = [(PROMPT, "51413", y) for y in ("51410", "51400", "5141", "41413", "51403")] * 3
    judge = BradleyTerryRewardJudge(latent_reward, scale=2.0, mode="sample", seed=11)
    out = judge.compare_batch(items)
    assert set(out) <= {0.0, 1.0}
    assert out == BradleyTerryRewardJudge(
        latent_reward, scale=2.0, mode="sample", seed=11
    ).compare_batch(items)
    assert list(reversed(out)) == judge.compare_batch(list(reversed(items)))
    many = [(PROMPT, "51413", str(i)) for i in range(10_000, 10_400)]
    p = judge.prob(*many[0])
    freq = np.mean(judge.compare_batch(many))
    assert abs(freq - p) < 0.08


def test_judge_returns_none_for_non_finite_rewards() -> None:
    judge = BradleyTerryRewardJudge(lambda prompt, y: math.nan if y == "bad" else 0.0)
    assert judge.compare_batch([("x", "a", "bad"), ("x", "a", "b")]) == [None, 0.5]


def test_judge_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="mode"):
        BradleyTerryRewardJudge(latent_reward, mode="vote")
    with pytest.raises(ValueError, match="scale"):
        BradleyTerryRewardJudge(latent_reward, scale=0.0)


def test_load_reward_fn() -> None:
    assert load_reward_fn("builtin") is latent_reward
    assert load_reward_fn("apo_pipeline.task.synthetic:latent_reward") is latent_reward
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_reward_fn("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        load_reward_fn("apo_pipeline.task.synthetic:nope")
    with pytest.raises(ValueError, match="not callable"):
        load_reward_fn("apo_pipeline.task.synthetic:PROMPT_END")
    with pytest.raises(ValueError, match="module:function"):
        load_reward_fn("latent_reward")
