"""OnMC-PO with SmolLM2 as a user runs it (`python jobs/onmcpo.py`), shortened, and what these runs
show about the real model (issue 12 item 4; each engine / learner start costs tens of seconds on
CPU, so the checks share the runs):
- SmolLM2 as the policy with the constraint reward on the real-text instruction task: its stored
  rollouts give vLLM's log-probs, checked against transformers'; its greedy evaluation after the
  learner -> engine sync (tied embeddings) gives vLLM's tokens, checked against transformers' on the
  run's HF export, which reloads tied; its responses, as labelled pairs, are what SmolLM2 judges
  (`apo-pipeline judge-eval --pairs`);
- SmolLM2 as the LLM judge of the built-in task (the set-up of issue 12, where the judge found
  neither label and the job died with "no training items"), and `judge-eval` on that run;
- a round in which the judge ranks no prompt stops the job with one line (an LLM judge whose
  context is too short for any comparison; the tiny model, no SmolLM2 needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.storage.tables import read_rollouts
from apo_pipeline.task.instructions import constraint_reward

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHORT = [
    "data.num_prompts=3", "data.num_eval_prompts=2", "generation.temperatures=[1.0]", "generation.n_per_temperature=3",
    "generation.max_tokens=12", "learner.micro_batch_size=3", "loop.segments=1", "loop.total_steps=1",
    "eval.greedy=false", "checkpoint.enabled=false", "monitoring.progress=false", "cluster.kv_cache_gib=0.25",
]
# SmolLM2 judging the built-in task's tiny policy (the data.chat=false default; the judge's own chat is on)
LLM_JUDGE = ["judge.backend=llm", "judge.model=builtin:smollm2", "judge.max_model_len=512"]
# SmolLM2 as the policy: 4 prompts x K = 4 (2 at T 0.7, 2 at 1.0); lr 1e-3 so that one step of 2
# prompts changes the greedy tokens
SMOLLM2_POLICY = [
    "model.path=builtin:smollm2", "model.max_model_len=192", "data.prompts=builtin:instructions",
    "data.eval_prompts=builtin:instructions", "data.chat=true", "data.max_prompt_tokens=96", "data.num_prompts=4",
    "generation.temperatures=[0.7,1.0]", "generation.n_per_temperature=2", "eval.greedy=true",
    "learner.micro_batch_size=2", "learner.lr=1e-3",
    "judge.backend=reward", "judge.reward_fn=builtin:constraints",
]


def run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "onmcpo.py"), "--run-dir", str(run_dir), *SHORT, *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)


def judge_eval(out: Path, *args: str) -> dict:
    """`apo-pipeline judge-eval ARGS -o OUT`; the JSON report it wrote beside OUT."""
    cmd = [sys.executable, "-m", "apo_pipeline.cli", "judge-eval", *args, "-o", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.with_suffix(".json").read_text())


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture(scope="module")
def constraint_run(smollm2_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of OnMC-PO on SmolLM2 with the constraint reward (asserted to succeed)."""
    run_dir = tmp_path_factory.mktemp("smol") / "rw"
    proc = run(run_dir, *SMOLLM2_POLICY)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return run_dir


def test_onmcpo_with_the_constraint_reward(constraint_run: Path) -> None:
    evals = events(constraint_run, "eval")
    assert [e["iteration"] for e in evals] == [0, 1] and all(0.0 <= e["reward_mean"] <= 1.0 for e in evals)
    (sync,) = [e for e in events(constraint_run, "stage") if e["stage"] == "sync"]
    assert sync["bytes"] < 560e6  # 538 MB of fp32 weights: the tied matrix sent once
    model = AutoModelForCausalLM.from_pretrained(constraint_run / "final")  # the HF export reloads, tied
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_vllm_logprobs_match_transformers(constraint_run: Path, smollm2_dir: str, hf_reference, one_torch_thread) -> None:
    """The segment's candidates were sampled by vLLM from SmolLM2 as converted; transformers gives
    the same log-probs (temperature-scaled) and the converted model answers sensibly."""
    rollouts = read_rollouts(constraint_run / "seg_0001" / "rollouts.parquet")
    assert len(rollouts) == 4 and all(len(r.candidates) == 4 for r in rollouts)
    assert all(r.prompt.startswith("<|im_start|>system") and r.instruction and r.instruction in r.prompt for r in rollouts)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    worst = 0.0
    for r in rollouts[:3]:
        for c, temperature in ((r.candidates[0], 0.7), (r.candidates[2], 1.0)):
            assert c.temperature == temperature
            want = hf_reference.logprob(model, r.prompt_ids, c.token_ids, c.temperature)
            worst = max(worst, abs(c.logprob - want) / len(c.token_ids))
    print(f"vLLM vs transformers log-probs: worst {worst:.2e} nats per token")
    assert worst < 2e-3, f"vLLM vs transformers: {worst:.2e} nats per token"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    question = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                                             add_generation_prompt=True, tokenize=False)
    answer = hf_reference.greedy(model, tokenizer.encode(question, add_special_tokens=False), 8, tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(answer)


def test_synced_engine_greedy_equals_transformers_on_the_export(constraint_run: Path, hf_reference, one_torch_thread) -> None:
    """After the DeepSpeed step and the learner -> engine sync (tied embeddings), vLLM's greedy
    tokens on the held-out prompts changed, and equal transformers' on the run's HF export."""
    before = read_rollouts(constraint_run / "eval" / "greedy_0.parquet")
    after = read_rollouts(constraint_run / "eval" / "greedy_1.parquet")
    assert [c.token_ids for r in after for c in r.candidates] != [c.token_ids for r in before for c in r.candidates]
    model = AutoModelForCausalLM.from_pretrained(constraint_run / "final").eval()
    eos = AutoTokenizer.from_pretrained(constraint_run / "final").eos_token_id
    for r in after:
        assert r.candidates[0].token_ids == hf_reference.greedy(model, r.prompt_ids, 12, eos)


def test_llm_judge_scores_real_responses(constraint_run: Path, tmp_path: Path) -> None:
    """SmolLM2 judging SmolLM2's responses (the run's 4 prompts, every pair of their 4 candidates)
    and 3 pairs with an obvious answer, through its chat template with the label spelling it
    actually predicts: it scores >= 95% of the 54 comparisons (both orders)."""
    rows = [{"prompt": r.judge_prompt, "a": r.candidates[i].text, "b": r.candidates[j].text}
            for r in read_rollouts(constraint_run / "seg_0001" / "rollouts.parquet") for i, j in combinations(range(4), 2)]
    for row in rows:  # the constraint reward as the reference, where it tells the two apart
        ra, rb = constraint_reward(row["prompt"], row["a"]), constraint_reward(row["prompt"], row["b"])
        if ra != rb:
            row["preferred"] = "a" if ra > rb else "b"
    obvious = [
        ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
        ("What is 3 + 4?", "3 + 4 = 7.", "3 + 4 = 12."),
        ("Name a fruit.", "An apple.", "A hammer."),
    ]
    rows += [{"prompt": p, "a": a, "b": b, "preferred": "a"} for p, a, b in obvious]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = judge_eval(tmp_path / "judge.md", "--pairs", str(path), "judge.model=builtin:smollm2", "judge.max_model_len=512")
    print(f"judge-eval on {len(rows)} pairs: {report}")
    assert report["pairs"] == 27 and report["asked"] == 54 and report["scored"] >= 0.95
    assert report["judge_chat"] is True and report["judge_label_mass"] > 0.05 and report["reference_pairs"] >= 3


def test_onmcpo_with_smollm2_as_judge_of_the_builtin_task(smollm2_dir: str, tmp_path: Path) -> None:
    proc = run(tmp_path / "llm", *LLM_JUDGE)
    assert proc.returncode == 0, proc.stderr[-6000:]
    setup = events(tmp_path / "llm", "judge_setup")
    assert len(setup) == 1 and setup[0]["chat"] is True and setup[0]["label_mass"] > 0.05
    (judged,) = events(tmp_path / "llm", "judge")
    assert judged["asked"] == 2 * 3 * 2 and judged["failed"] == 0  # 3 prompts, K-1 = 2 rounds, both orders
    assert [e["iteration"] for e in events(tmp_path / "llm", "eval")] == [0, 1]
    assert events(tmp_path / "llm", "train")
    # from the stored judgements, with the task's r* as the reference
    report = judge_eval(tmp_path / "llm" / "report" / "judge.md", str(tmp_path / "llm"))
    assert report["pairs"] == 6 and report["asked"] == 12 and report["scored"] == 1.0
    assert report["reference"] == "builtin" and 0.0 <= report["order_agreement"] <= 1.0
    assert (tmp_path / "llm" / "report" / "judge.md").is_file()


def test_a_round_the_judge_drops_entirely_stops_with_one_line(tmp_path: Path) -> None:
    """An LLM judge (the tiny model) whose 24-token context holds no comparison: every comparison
    fails (counted as overlong), and the job stops after the first judge round with one line naming
    the judge's counts, instead of dying in the trainer with "no training items"."""
    proc = run(tmp_path / "drop", "judge.backend=llm", "judge.model=builtin:tiny", "judge.max_model_len=24")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("onmcpo: stopped:")]
    assert line.startswith("onmcpo: stopped: the judge dropped every prompt of segment 1 (3 prompts; comparisons 3")
    assert "failed 3" in line and "scored 0" in line and "Traceback" not in proc.stderr
    (judged,) = events(tmp_path / "drop", "judge")
    assert judged["failed"] == 3 and judged["scored"] == 0 and judged["overlong"] >= judged["asked"] == 6
    assert not (tmp_path / "drop" / "final").exists()
