"""Sample responses for the run report: held-out prompts with the starting policy's response and the
last evaluated policy's, greedy (else sampled), scored by the run's reward where it has one.

Reads `<run>/eval/{greedy,sampled}_<index>.parquet` (written by every evaluation). The reward is
the reward judge's `judge.reward_fn`, or the reference reward of a built-in prompt source
(`builtin:instructions` -> `builtin:constraints`) when the judge is an LLM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from apo_pipeline.storage import read_rollouts
from apo_pipeline.task.reward_judge import REFERENCE_REWARDS, load_reward_fn

EVAL_FILE_RE = re.compile(r"^(greedy|sampled)_(\d+)\.parquet$")


def _eval_files(run_dir: Path) -> dict[str, dict[int, Path]]:
    """{kind: {evaluation index: file}} of a run's stored evaluation responses."""
    found: dict[str, dict[int, Path]] = {}
    for path in (run_dir / "eval").glob("*.parquet") if (run_dir / "eval").is_dir() else []:
        if m := EVAL_FILE_RE.match(path.name):
            found.setdefault(m.group(1), {})[int(m.group(2))] = path
    return found


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.yaml as a dict ({} when there is none)."""
    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def sample_reward_spec(config: dict[str, Any]) -> str | None:
    """The reward that scores the samples: the reward judge's, else the built-in prompt source's."""
    judge, data = config.get("judge") or {}, config.get("data") or {}
    if judge.get("backend", "reward") == "reward":
        return judge.get("reward_fn", "builtin")
    return REFERENCE_REWARDS.get(str(data.get("eval_prompts", "builtin")))


def _quote(text: str, limit: int = 400) -> str:
    """A response as a Markdown blockquote (newlines kept, long text cut)."""
    text = text if len(text) <= limit else text[:limit] + " [...]"
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def sample_lines(run_dir: str | Path, count: int = 4) -> list[str]:
    """Markdown lines of the "Sample responses" section (empty when no evaluation was stored)."""
    run_dir = Path(run_dir)
    files = _eval_files(run_dir)
    kind = "greedy" if "greedy" in files else "sampled"
    by_index = files.get(kind, {})
    if len(by_index) < 2 or 0 not in by_index:
        return []
    last = max(by_index)
    start = {r.prompt_index: r for r in read_rollouts(by_index[0])}
    final = sorted(read_rollouts(by_index[last]), key=lambda r: r.prompt_index)
    spec = sample_reward_spec(run_config(run_dir))
    reward = load_reward_fn(spec) if spec else None
    lines = [f"## Sample responses ({kind}, held-out; start vs evaluation {last})", ""]
    for ro in [r for r in final if r.prompt_index in start][:count]:
        lines += [f"**Prompt {ro.prompt_index}:** {ro.judge_prompt}", ""]
        for label, r in (("start", start[ro.prompt_index]), (f"after {last}", ro)):
            text = r.candidates[0].text
            score = f" (reward {reward(ro.judge_prompt, text):.3g})" if reward else ""
            lines += [f"*{label}*{score}:", "", _quote(text), ""]
    return lines
