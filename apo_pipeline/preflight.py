"""Checks that need no Ray, run by `launch.run_job` before anything starts (no Ray import here).

Each problem is one line `<key>: <reason>`; the job prints `<job>: <key>: <reason>` per problem and
exits with code 2. The cheap checks run first (files, rows, paths: about one `import torch` of
time); the tokenizer checks, which load tokenizers but never weights or engines, run only when
those passed. They read tokenizer.json with the `tokenizers` library (tokenizer_files.py), so a
tokenizer or label problem also comes back in a few seconds; importing transformers' AutoTokenizer
(about 3.5 s of CPU on its own) is left for tokenizers that have no tokenizer.json or need remote code:
- the run directory: not in use by a live driver (`monitoring.run_state`); a re-run that would
  pick up saved state (a checkpoint or a round's tables) refuses unsafe config changes
  (`loops.resume.check_resume_config`); a directory holding neither accepts any config, so a
  failed start pins nothing;
- data.prompts / data.eval_prompts and loop.dataset (offline MC-PO): the file or directory exists
  and its rows are valid (the first malformed row, by file and line, unless data.on_error=skip);
- judge.reward_fn (reward judge): importable and callable;
- model.path and judge.model (llm judge): a known model source whose check passes (a directory
  needs config.json and a tokenizer that loads); with data.chat the tokenizer needs a chat
  template; the judge's labels must be single tokens of the judge's tokenizer
  with or without a leading space (`engine.judge_labels.label_variants`).

Model sources: `register_model_source(name_or_prefix, check)` adds a kind of `model.path`
(e.g. `gguf:`). A spec uses the check registered under its exact name, else under the longest
registered prefix, else the local-directory check. `check(spec, key=..., trust_remote_code=...)` does the
cheap part (the files exist), raising ValueError / FileNotFoundError / OSError with the reason,
and returns a loader: a function of no argument that returns the spec's tokenizer (raising the
same way), or None when there is no tokenizer to check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apo_pipeline.config import BaseJobConfig, ConfigError
from apo_pipeline.task.model_sources import GGUF_PREFIX
from apo_pipeline.task.model_spec import BUILTIN_MODELS, is_builtin_model, resolve_model
from apo_pipeline.tokenizer_files import FileTokenizer, read_tokenizer

TokenizerLoader = Callable[[], Any]
ModelCheck = Callable[..., "TokenizerLoader | None"]
MODEL_SOURCES: dict[str, ModelCheck] = {}
CHECK_ERRORS = (ValueError, FileNotFoundError, OSError, ImportError)
PROBE_TEXT = "Hello, world"


def register_model_source(name_or_prefix: str, check: ModelCheck) -> None:
    """Check `model.path` / `judge.model` values equal to, or starting with, `name_or_prefix` with `check`."""
    MODEL_SOURCES[name_or_prefix] = check


def _tiny_tokenizer() -> FileTokenizer:
    from apo_pipeline.task.tokenizer import CHAT_TEMPLATE, PAD, build_core

    core = build_core()
    return FileTokenizer(core, core.token_to_id(PAD), CHAT_TEMPLATE)


def _builtin_tiny(spec: str, *, key: str = "model.path", trust_remote_code: bool = False) -> TokenizerLoader:
    """The built-in tiny model is built on first use; its tokenizer is ours (no build needed)."""
    return _tiny_tokenizer


def _tokenizer_loader(spec: str, path: Path, trust_remote_code: bool) -> TokenizerLoader:
    """Loads the tokenizer of HF directory `path`; it must encode text (vLLM and the learner load it
    too). From its files with the `tokenizers` library when it has a tokenizer.json and no remote
    code (tokenizer_files.py: seconds faster than importing transformers), else with AutoTokenizer.
    Without vocabulary files transformers builds an empty tokenizer rather than failing: the probe
    catches that."""

    def load() -> Any:
        try:
            tok = None if trust_remote_code else read_tokenizer(path)
            if tok is None:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises many kinds; all mean "no usable tokenizer"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{spec}: no loadable tokenizer ({first})") from None
        if not tok.encode(PROBE_TEXT, add_special_tokens=False):
            raise ValueError(f"{spec}: no loadable tokenizer (it encodes {PROBE_TEXT!r} to no tokens: vocabulary files missing?)")
        return tok

    return load


def _directory(spec: str, *, key: str = "model.path", trust_remote_code: bool = False) -> TokenizerLoader:
    """A local HF model directory with config.json and a tokenizer that loads."""
    return _tokenizer_loader(spec, resolve_model(spec, key=key), trust_remote_code)


def _gguf(spec: str, *, key: str = "model.path", trust_remote_code: bool = False) -> TokenizerLoader | None:
    """`builtin:smollm2` / `gguf:PATH`: the GGUF file is there and, unless its conversion is cached,
    the converter packages are installed. The tokenizer is checked once converted (the conversion
    itself runs before Ray starts, or in the judge for `judge.model`)."""
    from apo_pipeline.task.model_sources import CONVERTED_MARKER, check_gguf_source, converted_dir, default_cache_dir

    done = converted_dir(check_gguf_source(spec, key=key), default_cache_dir())
    return _tokenizer_loader(spec, done, trust_remote_code) if (done / CONVERTED_MARKER).is_file() else None


register_model_source("builtin:tiny", _builtin_tiny)
register_model_source("builtin:smollm2", _gguf)
register_model_source(GGUF_PREFIX, _gguf)


def model_check(spec: str) -> ModelCheck | None:
    """The check for `spec` (None: a built-in name with no check registered, accepted as is)."""
    if spec in MODEL_SOURCES:
        return MODEL_SOURCES[spec]
    prefixes = [p for p in MODEL_SOURCES if p.endswith(":") and spec.startswith(p)]
    if prefixes:
        return MODEL_SOURCES[max(prefixes, key=len)]
    if spec.startswith("builtin:"):
        if is_builtin_model(spec):
            return None
        known = sorted({*BUILTIN_MODELS, *(p for p in MODEL_SOURCES if p.startswith("builtin:"))})
        raise ValueError(f"unknown built-in model {spec!r}; known: {', '.join(known)}")
    return _directory


class Checks:
    """Collects `<key>: <reason>` lines."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, key: str, reason: str) -> None:
        self.problems.append(f"{key}: {reason}")

    def run(self, key: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, or None with a problem recorded under `key` if it raises a checked error."""
        try:
            return fn()
        except CHECK_ERRORS as exc:
            message = str(exc).strip() or type(exc).__name__
            self.fail(key, message.removeprefix(f"{key}: "))
            return None


def _run_dir(checks: Checks, cfg: BaseJobConfig, run_dir: Path) -> None:
    from apo_pipeline.loops.resume import check_resume_config, read_saved_config
    from apo_pipeline.monitoring.run_state import driver_alive, read_driver_record
    from apo_pipeline.storage.rundir import RunDir

    run = RunDir(run_dir)
    driver = read_driver_record(run)
    if driver is not None and driver_alive(driver):
        checks.fail("--run-dir", f"{run_dir} is in use by a running driver (pid {driver.get('pid')} on "
                                 f"{driver.get('host')}); wait for it to end or use another --run-dir")
    saved = read_saved_config(run.config_path)
    state = run.saved_state()
    if saved is None or not state:
        return
    try:
        check_resume_config(saved, cfg)
    except ConfigError as exc:
        checks.problems.append(f"{exc} (the run directory holds {', '.join(state[:3])})")


def _data(checks: Checks, cfg: BaseJobConfig) -> None:
    from apo_pipeline.task.prompts import load_prompts

    d = cfg.data
    for key, source, split, limit in (("data.prompts", d.prompts, "train", d.num_prompts),
                                      ("data.eval_prompts", d.eval_prompts, "eval", d.num_eval_prompts)):
        if source != "builtin":
            checks.run(key, lambda: load_prompts(source, split=split, limit=limit, on_error=d.on_error))
    dataset = getattr(getattr(cfg, "loop", None), "dataset", "builtin")
    if dataset != "builtin":
        from apo_pipeline.loops.offline_data import read_candidate_rows

        checks.run("loop.dataset", lambda: read_candidate_rows(dataset, on_error=d.on_error))
    if cfg.judge.backend == "reward":
        from apo_pipeline.task.reward_judge import load_reward_fn

        checks.run("judge.reward_fn", lambda: load_reward_fn(cfg.judge.reward_fn))


def _model_sources(checks: Checks, cfg: BaseJobConfig) -> dict[str, tuple[str, TokenizerLoader]]:
    """The cheap part of each model's check; `{key: (spec, tokenizer loader)}` of those that passed."""
    specs = {"model.path": cfg.model.path}
    if cfg.judge.backend == "llm" and cfg.judge.model:
        specs["judge.model"] = cfg.judge.model
    loaders = {}
    for key, spec in specs.items():
        check = checks.run(key, lambda: model_check(spec))
        loader = check and checks.run(key, lambda: check(spec, key=key, trust_remote_code=cfg.model.trust_remote_code))
        if loader is not None:
            loaders[key] = (spec, loader)
    return loaders


def _tokenizers(checks: Checks, cfg: BaseJobConfig, loaders: dict[str, tuple[str, TokenizerLoader]]) -> None:
    """Load each tokenizer; the chat template (data.chat) and the judge's single-token labels."""
    for key, (spec, loader) in loaders.items():
        tok = checks.run(key, loader)
        if tok is None:
            continue
        wants_chat = cfg.data.chat if key == "model.path" else cfg.judge.chat
        if wants_chat and not getattr(tok, "chat_template", None):
            chat_key = "data.chat" if key == "model.path" else "judge.chat"
            checks.fail(chat_key, f"the tokenizer of {key} {spec!r} has no chat template")
        if key == "judge.model":
            from apo_pipeline.engine.judge_labels import label_variants

            checks.run("judge.labels", lambda: label_variants(tok, cfg.judge.labels))


def preflight(cfg: BaseJobConfig, run_dir: Path) -> list[str]:
    """Every problem found, one `<key>: <reason>` line each (empty: ready to start). The tokenizer
    checks run only when every cheap one passed, so the common mistakes come back in seconds."""
    checks = Checks()
    _run_dir(checks, cfg, run_dir)
    _data(checks, cfg)
    loaders = _model_sources(checks, cfg)
    if not checks.problems:
        _tokenizers(checks, cfg, loaders)
    return checks.problems
