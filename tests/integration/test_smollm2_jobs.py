"""OnMC-PO with SmolLM2 as a user runs it (`python jobs/onmcpo.py`), shortened: SmolLM2 as the LLM
judge of the built-in task (the set-up of issue 12, where the judge found neither label and the job
died with "no training items"), and SmolLM2 as the policy with the constraint reward on the real-text
instruction task. A round in which the judge ranks no prompt stops the job with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHORT = [
    "data.num_prompts=3", "data.num_eval_prompts=2", "generation.temperatures=[1.0]", "generation.n_per_temperature=3",
    "generation.max_tokens=12", "learner.micro_batch_size=3", "loop.segments=1", "loop.total_steps=1",
    "eval.greedy=false", "checkpoint.enabled=false", "monitoring.progress=false", "cluster.kv_cache_gib=0.25",
]
# SmolLM2 judging the built-in task's tiny policy (the data.chat=false default; the judge's own chat is on)
LLM_JUDGE = ["judge.backend=llm", "judge.model=builtin:smollm2", "judge.max_model_len=512"]
SMOLLM2_POLICY = [
    "model.path=builtin:smollm2", "model.max_model_len=192", "data.prompts=builtin:instructions",
    "data.eval_prompts=builtin:instructions", "data.chat=true", "data.max_prompt_tokens=96",
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


def check_final_is_tied(run_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


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


def test_onmcpo_with_the_constraint_reward(smollm2_dir: str, tmp_path: Path) -> None:
    proc = run(tmp_path / "rw", *SMOLLM2_POLICY, "judge.backend=reward", "judge.reward_fn=builtin:constraints")
    assert proc.returncode == 0, proc.stderr[-6000:]
    evals = events(tmp_path / "rw", "eval")
    assert [e["iteration"] for e in evals] == [0, 1] and all(0.0 <= e["reward_mean"] <= 1.0 for e in evals)
    assert (tmp_path / "rw" / "eval" / "sampled_1.parquet").is_file()
    check_final_is_tied(tmp_path / "rw")


def test_a_round_the_judge_drops_entirely_stops_with_one_line(smollm2_dir: str, tmp_path: Path) -> None:
    """Labels SmolLM2 never predicts first (the template asks for A or B; the labels are banana /
    cherry): every comparison fails, and the job stops after the first judge round with one line
    naming the judge's counts, instead of dying in the trainer with "no training items"."""
    proc = run(tmp_path / "drop", *LLM_JUDGE, "judge.labels=[banana,cherry]", "judge.max_retries=0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("onmcpo: stopped:")]
    assert line.startswith("onmcpo: stopped: the judge dropped every prompt of segment 1 (3 prompts; comparisons 3")
    assert "failed 3" in line and "scored 0" in line and "Traceback" not in proc.stderr
    assert events(tmp_path / "drop", "judge")[0]["failed"] == 3 and not (tmp_path / "drop" / "final").exists()


def test_judge_eval_runs_the_judge_on_labelled_pairs(smollm2_dir: str, tmp_path: Path) -> None:
    pairs = [
        ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
        ("What is 3 + 4?", "3 + 4 = 7.", "3 + 4 = 12."),
        ("Name a fruit.", "An apple.", "A hammer."),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "a": a, "b": b, "preferred": "a"}) + "\n" for p, a, b in pairs))
    report = judge_eval(tmp_path / "judge.md", "--pairs", str(path), "judge.model=builtin:smollm2", "judge.max_model_len=512")
    assert report["pairs"] == 3 and report["asked"] == 6 and report["scored"] == 1.0
    assert report["reference_pairs"] <= 3 and report["judge_chat"] is True and report["judge_label_mass"] > 0.05
    print(f"judge-eval on 3 labelled pairs: {report}")

