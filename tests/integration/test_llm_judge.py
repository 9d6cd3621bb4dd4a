"""The `llm` judge on real vLLM engines: a tiny model trained to prefer responses containing a 7."""

from __future__ import annotations

import os
import random
import signal

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.judge import Judge
from apo_pipeline.engine.judge_labels import label_variants
from apo_pipeline.engine.placement import Placement
from apo_pipeline.task.tiny_model import random_tiny_model

TEMPLATE = "{prompt} A:{a} B:{b} ->"
GOOD, OTHER_DIGITS = "7", "012345689"
NUM_PROMPTS, K = 6, 4


def digits(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(OTHER_DIGITS) for _ in range(n)]


def candidates(rng: random.Random, k: int) -> tuple[str, list[str], int]:
    """A prompt and k three-digit responses; exactly one (the returned index) contains a 7."""
    prompt = "reverse " + " ".join(digits(rng, 3)) + " ="
    cands = [digits(rng, 3) for _ in range(k)]
    best = rng.randrange(k)
    cands[best][rng.randrange(3)] = GOOD
    return prompt, [" ".join(c) for c in cands], best


def train_judge(model_dir: str, steps: int = 80, batch: int = 32) -> None:
    """AdamW on `TEMPLATE` with target label A or B: whichever response contains the 7."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    label_ids = torch.tensor(label_variants(tokenizer, ("A", "B"))[0].ids)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        cases = [candidates(rng, 2) for _ in range(batch)]
        texts = [TEMPLATE.format(prompt=p, a=a, b=b) for p, (a, b), _ in cases]
        ids = torch.tensor([tokenizer.encode(t) for t in texts])  # equal lengths by construction
        logits = model(input_ids=ids).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, label_ids[[best for *_, best in cases]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(random_tiny_model(tmp_path_factory.mktemp("judge") / "model", seed=1))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_judge(path)
    finally:
        torch.set_num_threads(before)
    return path


@pytest.fixture(scope="module")
def judges(placement: Placement, cluster: ClusterConfig, judge_dir: str):
    """`judge-0` reads labels A/B; `judge-1` asks for labels C/D in the top 2, which never appear."""
    config = JudgeConfig(backend="llm", template=TEMPLATE, labels=("A", "B"), max_model_len=128, chat=False)
    good = Judge.options(**placement.options("judge", 0)).remote(config, cluster, model_path=judge_dir)
    failing = Judge.options(**placement.options("judge", 1)).remote(
        config.model_copy(update={"labels": ("C", "D")}), cluster, model_path=judge_dir, top_logprobs=2
    )
    ray.get([good.metrics.remote(), failing.metrics.remote()])
    yield good, failing
    for actor in (good, failing):
        ray.kill(actor)


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], list[list[str]], list[int]]:
    rng = random.Random(1234)
    cases = [candidates(rng, K) for _ in range(NUM_PROMPTS)]
    return [p for p, _, _ in cases], [c for _, c, _ in cases], [b for _, _, b in cases]


@pytest.mark.slow
def test_ranking_finds_the_known_winner(judges, held_out) -> None:
    good, _ = judges
    prompts, cands, best = held_out
    before = ray.get(good.metrics.remote())
    result = ray.get(good.rank.remote(prompts, cands))
    after = ray.get(good.metrics.remote())
    assert [p.winner for p in result.prompts] == best
    assert result.judge_calls == K - 1 == after["calls"] - before["calls"]  # one vLLM call per round
    comparisons = NUM_PROMPTS * (K - 1)
    assert result.totals["comparisons"] == comparisons and result.totals["asked"] == 2 * comparisons
    assert after["asked"] - before["asked"] == 2 * comparisons == after["scored"] - before["scored"]
    assert after["failed"] == before["failed"] and after["retried"] == before["retried"]
    # the probe at start-up: the trained judge puts its mass on "A"/"B" (the tiny vocabulary has no " A")
    assert after["label_variant"] == "'A'/'B'" and after["label_mass"] > 0.5 and after["chat"] is False
    for p in result.prompts:  # both orders asked and scored
        assert all(c.p_ab is not None and c.p_ba is not None for c in p.comparisons)


@pytest.mark.slow
def test_win_matrix_in_one_call(judges, held_out) -> None:
    good, _ = judges
    prompts, cands, best = held_out
    calls = ray.get(good.metrics.remote())["calls"]
    matrices = ray.get(good.win_matrix.remote(prompts, cands))
    assert ray.get(good.metrics.remote())["calls"] == calls + 1
    assert [m.chosen for m in matrices] == best
    for m in matrices:
        assert m.raw.shape == (K, K) and m.failures == 0


@pytest.mark.slow
def test_failures_are_retried_then_none(judges, held_out) -> None:
    good, failing = judges
    prompts, cands, _ = held_out
    result = ray.get(failing.rank.remote(prompts, cands))
    assert all(p.winner is None for p in result.prompts)
    assert result.judge_calls == 1 and result.totals["failures"] == NUM_PROMPTS
    m = ray.get(failing.metrics.remote())
    asked = 2 * NUM_PROMPTS
    assert (m["asked"], m["scored"], m["retried"], m["failed"], m["calls"]) == (asked, 0, asked, asked, 2)
    assert m["label_mass"] < 0.05  # the probe saw it: labels C / D carry no probability

    calls = ray.get(good.metrics.remote())["calls"]
    too_long = (prompts[0], " ".join(["1"] * 100), cands[0][0])
    assert ray.get(good.compare_batch.remote([too_long, (prompts[0], cands[0][0], cands[0][1])]))[0] is None
    m = ray.get(good.metrics.remote())
    assert m["overlong"] == 1 and m["calls"] == calls + 1


@pytest.mark.slow
def test_bad_labels_stop_the_actor(ray_session: None, cluster: ClusterConfig, judge_dir: str) -> None:
    config = JudgeConfig(backend="llm", template=TEMPLATE, labels=("Yes", "No"), max_model_len=128)
    actor = Judge.options(num_cpus=0).remote(config, cluster, model_path=judge_dir)
    with pytest.raises(ray.exceptions.RayActorError, match="judge.labels"):
        ray.get(actor.metrics.remote())


@pytest.mark.slow
def test_reward_backend_behind_the_same_actor(ray_session: None, cluster: ClusterConfig) -> None:
    judge = Judge.options(num_cpus=0).remote(JudgeConfig(backend="reward", mode="prob"), cluster)
    prompts = ["reverse 3 1 4 =", "reverse 5 6 ="]
    cands = [["1 2", "4 1 3 3", "4 1 3", "3 1 4"], ["5 6", "6 5", "6"]]
    result = ray.get(judge.rank.remote(prompts, cands))
    assert [p.winner for p in result.prompts] == [2, 1] and result.judge_calls == 3
    assert [m.chosen for m in ray.get(judge.win_matrix.remote(prompts, cands))] == [2, 1]
    ray.kill(judge)


@pytest.mark.slow
def test_dead_judge_restarts_and_its_call_is_resent(ray_session: None, cluster: ClusterConfig) -> None:
    """SIGKILL the judge's process while a call is in flight (right after it is submitted, so a fast
    machine cannot finish it first): Ray restarts it and re-sends the call (`max_task_retries`),
    which returns what an undisturbed call returns."""
    judge = Judge.options(num_cpus=0, max_restarts=1, max_task_retries=1).remote(JudgeConfig(backend="reward"), cluster)
    prompts = ["reverse 3 1 4 =", "reverse 5 6 ="] * 10_000  # a few seconds of ranking
    cands = [["1 2", "4 1 3 3", "4 1 3", "3 1 4"], ["5 6", "6 5", "6", "5"]] * 10_000
    pid = ray.get(judge.__ray_call__.remote(lambda self: os.getpid()))
    reference = ray.get(judge.rank.remote(prompts, cands, 3))
    call = judge.rank.remote(prompts, cands, 3)
    os.kill(pid, signal.SIGKILL)
    result = ray.get(call)
    assert ray.get(judge.__ray_call__.remote(lambda self: os.getpid())) != pid
    assert [p.winner for p in result.prompts] == [p.winner for p in reference.prompts]
    assert result.judge_calls == reference.judge_calls == 3
    ray.kill(judge)
