"""Checks before Ray starts: every file, row, tokenizer and judge label the config names, one line
`<key>: <reason>` per problem; the job prints them as `<job>: <key>: <reason>` and exits with 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apo_pipeline.config import MCPOConfig, OnMCPOConfig, load_config
from apo_pipeline.preflight import MODEL_SOURCES, preflight, register_model_source
from apo_pipeline.task.tiny_model import random_tiny_model
from apo_pipeline.tokenizer_files import read_tokenizer

REPO = Path(__file__).resolve().parents[2]


def cfg(*overrides: str, job=OnMCPOConfig):
    return load_config(job, None, list(overrides))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A real HF model directory (untrained tiny Qwen2 with its tokenizer and chat template)."""
    return random_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def jsonl(tmp_path):
    def write(*rows: str) -> Path:
        path = tmp_path / "prompts.jsonl"
        path.write_text("".join(row + "\n" for row in rows))
        return path
    return write


def test_the_default_config_passes(tmp_path):
    assert preflight(cfg(), tmp_path / "run") == []


def test_missing_prompt_files_are_named(tmp_path):
    problems = preflight(cfg("data.prompts=missing.jsonl", "data.eval_prompts=/no/eval.parquet"), tmp_path)
    assert problems == ["data.prompts: prompt source not found: missing.jsonl",
                        "data.eval_prompts: prompt source not found: /no/eval.parquet"]


def test_the_first_malformed_row_is_named_by_file_and_line(tmp_path, jsonl):
    path = jsonl('{"prompt": "reverse:12="}', '{"prompt": 5}', "not json")
    assert preflight(cfg(f"data.prompts={path}"), tmp_path) == [
        f"data.prompts: {path}: line 2: 'prompt' is int, not a string or a list of messages"]
    assert preflight(cfg(f"data.prompts={path}", "data.on_error=skip"), tmp_path) == []  # skipped and counted later


def test_offline_dataset_rows_and_reward_function(tmp_path, jsonl):
    path = jsonl('{"prompt": "p", "candidates": ["a", "b"], "preferred": 0}', '{"prompt": "p", "candidates": ["a"], "preferred": 0}')
    problems = preflight(cfg(f"loop.dataset={path}", "judge.reward_fn=nosuchmodule:fn", job=MCPOConfig), tmp_path)
    assert problems == [
        f"loop.dataset: {path} row 2: 'candidates' must be a list of at least 2 strings",
        "judge.reward_fn: reward function 'nosuchmodule:fn': cannot import module 'nosuchmodule': No module named 'nosuchmodule'",
    ]


def test_model_sources(tmp_path, model_dir):
    assert preflight(cfg(f"model.path={model_dir}", "data.chat=true"), tmp_path) == []
    assert preflight(cfg("model.path=no-such-dir"), tmp_path) == [
        "model.path: model directory not found: no-such-dir (models are never downloaded)"]
    assert preflight(cfg("model.path=builtin:huge"), tmp_path) == [
        "model.path: unknown built-in model 'builtin:huge'; known: builtin:smollm2, builtin:tiny"]
    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    shutil.copy(model_dir / "config.json", no_tokenizer)
    assert preflight(cfg(f"model.path={no_tokenizer}"), tmp_path) == [f"model.path: {no_tokenizer}: no loadable tokenizer "
                                                                    "(no tokenizer file: tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json, ...)"]


def test_chat_needs_a_chat_template(tmp_path, model_dir):
    plain = tmp_path / "plain"
    shutil.copytree(model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    assert preflight(cfg(f"model.path={plain}"), tmp_path) == []
    assert preflight(cfg(f"model.path={plain}", "data.chat=true"), tmp_path) == [
        f"data.chat: the tokenizer of model.path {str(plain)!r} has no chat template"]
    # the judge has its own chat setting: data.chat is the policy's
    assert preflight(cfg("judge.backend=llm", f"judge.model={plain}", "data.chat=true"), tmp_path) == []
    assert preflight(cfg("judge.backend=llm", f"judge.model={plain}", "judge.chat=true"), tmp_path) == [
        f"judge.chat: the tokenizer of judge.model {str(plain)!r} has no chat template"]


def test_judge_labels_must_be_single_tokens_of_the_judges_tokenizer(tmp_path, model_dir):
    llm = ["judge.backend=llm", f"judge.model={model_dir}"]
    assert preflight(cfg(*llm), tmp_path) == []
    [problem] = preflight(cfg(*llm, "judge.labels=[Answer A, B]"), tmp_path)
    assert problem.startswith("judge.labels: ('Answer A', 'B') are not two distinct single tokens")
    assert preflight(cfg("judge.backend=llm", "judge.model=/no/judge"), tmp_path) == [
        "judge.model: model directory not found: /no/judge (models are never downloaded)"]


def test_the_tokenizer_checks_read_tokenizer_json_as_transformers_does(tmp_path, model_dir):
    """tokenizer_files.read_tokenizer (the `tokenizers` library, no transformers import) gives the
    ids, unknown token and chat template AutoTokenizer gives; without tokenizer.json transformers
    loads what is there; a malformed tokenizer.json is named."""
    from transformers import AutoTokenizer

    from apo_pipeline.engine.judge_labels import label_variants

    fast, slow = read_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert fast.unk_token_id == slow.unk_token_id is not None and fast.chat_template == slow.chat_template
    for text in ("A", " A", "Answer A", "Hello, world", "<|im_end|> Über\ttabs\n", "reverse:31415="):
        assert fast.encode(text, add_special_tokens=False) == slow.encode(text, add_special_tokens=False), text
        assert fast.encode(text) == slow.encode(text), text
    assert label_variants(fast, ("A", "B")) == label_variants(slow, ("A", "B"))
    slow_only = tmp_path / "slow-only"
    shutil.copytree(model_dir, slow_only)
    (slow_only / "tokenizer.json").unlink()
    assert read_tokenizer(slow_only) is None  # tokenizer_config.json is there: AutoTokenizer decides
    [problem] = preflight(cfg(f"model.path={slow_only}"), tmp_path / "run")
    assert problem.startswith(f"model.path: {slow_only}: no loadable tokenizer (")
    (slow_only / "tokenizer.json").write_text("{not json")
    [problem] = preflight(cfg(f"model.path={slow_only}"), tmp_path / "run")
    assert problem.startswith(f"model.path: {slow_only}: no loadable tokenizer (tokenizer.json: ")


def test_gguf_sources_are_checked_without_converting(tmp_path):
    """`gguf:PATH` / `builtin:smollm2` go through task/model_sources' checks, named by their key."""
    assert preflight(cfg("judge.backend=llm", f"judge.model=gguf:{tmp_path}/none.gguf"), tmp_path / "run") == [
        f"judge.model: GGUF file not found: {tmp_path}/none.gguf (models are never downloaded)"]
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf")
    [problem] = preflight(cfg(f"model.path=gguf:{tmp_path}/fake.gguf"), tmp_path / "run")
    assert problem.startswith("model.path: ") and "is not a GGUF file" in problem


def test_a_model_source_can_register_its_own_check(tmp_path, model_dir):
    seen = []

    def check(spec: str, *, key: str = "model.path", trust_remote_code: bool = False):
        seen.append(spec)
        if spec.endswith("missing"):
            raise FileNotFoundError(f"{spec}: no such file")
        return (lambda: seen.append("loaded")) if spec.endswith("notok") else None

    register_model_source("fake:", check)
    try:
        assert preflight(cfg("model.path=fake:/x.bin"), tmp_path) == []
        assert preflight(cfg("model.path=fake:missing"), tmp_path) == ["model.path: fake:missing: no such file"]
        assert preflight(cfg("model.path=fake:notok"), tmp_path) == []  # its loader ran (returned None: nothing more to check)
        assert preflight(cfg("model.path=fake:notok", "data.prompts=missing.jsonl"), tmp_path) == [
            "data.prompts: prompt source not found: missing.jsonl"]  # a cheap problem: no tokenizer loaded
    finally:
        del MODEL_SOURCES["fake:"]
    assert seen == ["fake:/x.bin", "fake:missing", "fake:notok", "loaded", "fake:notok"]


def test_a_run_dir_in_use_by_a_live_driver_is_refused(tmp_path):
    from apo_pipeline.monitoring.run_state import DriverRecord
    from apo_pipeline.storage.rundir import RunDir

    with DriverRecord(RunDir(tmp_path)):
        [problem] = preflight(cfg(), tmp_path)
    assert problem.startswith(f"--run-dir: {tmp_path} is in use by a running driver (pid ")
    assert preflight(cfg(), tmp_path) == []  # that driver finished


def test_the_job_prints_one_line_per_problem_and_starts_nothing(tmp_path, jsonl):
    """The command a user runs: exit code 2, `<job>: <key>: <reason>` lines, no traceback, no run
    directory, and Ray never imported."""
    bad = jsonl('{"prompt": "a"}', '{"prompt": 5}')
    run_dir = tmp_path / "run"
    code = ("import sys; from apo_pipeline.launch import run_job; "
            f"rc = run_job('onmcpo', ['--run-dir', {str(run_dir)!r}, 'data.prompts={bad}', 'model.path=no-such-dir']); "
            "print(json.dumps([rc, 'ray' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout) == [2, False]
    assert proc.stderr.splitlines() == [
        f"onmcpo: data.prompts: {bad}: line 2: 'prompt' is int, not a string or a list of messages",
        "onmcpo: model.path: model directory not found: no-such-dir (models are never downloaded)",
    ]
    assert not run_dir.exists()


def test_tokenizer_and_label_failures_come_back_without_transformers(tmp_path, model_dir):
    """A job whose judge labels are not single tokens, or whose model has no tokenizer, stops with one
    line and exit code 2 having imported neither Ray nor transformers (whose AutoTokenizer import
    alone costs about 3.5 s of CPU here; issue 14 asks for these lines within 5 s)."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    shutil.copy(model_dir / "config.json", weights_only)
    code = ("import json, sys; from apo_pipeline.launch import run_job; "
            "rc = run_job('onmcpo', sys.argv[1:]); "
            "print(json.dumps([rc, 'ray' in sys.modules, 'transformers' in sys.modules]))")
    for args, line in (
        (["judge.backend=llm", f"judge.model={model_dir}", "judge.labels=[Answer A, B]"],
         "onmcpo: judge.labels: ('Answer A', 'B') are not two distinct single tokens under the judge's tokenizer"),
        ([f"model.path={weights_only}", "data.chat=true"], f"onmcpo: model.path: {weights_only}: no loadable tokenizer (no tokenizer file"),
    ):
        proc = subprocess.run([sys.executable, "-c", code, "--run-dir", str(tmp_path / "run"), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert json.loads(proc.stdout) == [2, False, False], proc.stderr
        [printed] = proc.stderr.splitlines()
        assert printed.startswith(line)
