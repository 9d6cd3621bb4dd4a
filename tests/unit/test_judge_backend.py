"""Both judge backends are one `JudgeBackend`; the llm backend counts an engine failure as a failed
(retried) round of comparisons but lets a programming error through.

The engine failure is raised by a stand-in for the generate call (a vLLM engine error cannot be
caused on purpose); the retry-then-None path on a real engine is tests/integration/test_llm_judge.py.
"""

from __future__ import annotations

import pytest
from vllm.exceptions import VLLMServerError

from apo_pipeline.engine.llm_judge import LLMJudgeBackend
from apo_pipeline.judge_backend import JudgeBackend
from apo_pipeline.task.reward_judge import BradleyTerryRewardJudge


def test_both_backends_are_judge_backends() -> None:
    reward = BradleyTerryRewardJudge(lambda prompt, text: float(len(text)))
    assert isinstance(reward, JudgeBackend) and reward.metrics() == {}
    assert reward.compare_batch([("p", "long", "s")])[0] > 0.5
    assert issubclass(LLMJudgeBackend, JudgeBackend)


def backend_whose_engine_raises(error: Exception) -> LLMJudgeBackend:
    """An `LLMJudgeBackend` without an engine: its one-token generate call raises `error`."""
    backend = LLMJudgeBackend.__new__(LLMJudgeBackend)
    backend.counts = {"calls": 0, "errors": 0}
    backend.label_ids = (1, 2)

    def generate(prompts: list[list[int]]) -> list[dict[int, float]]:
        raise error

    backend._top_logprobs = generate
    return backend


def test_an_engine_error_is_an_unscored_round() -> None:
    for error in (VLLMServerError("engine died"), RuntimeError("kernel failed")):
        backend = backend_whose_engine_raises(error)
        assert backend._score([[5, 6], [7]]) == [None, None]
        assert backend.counts == {"calls": 1, "errors": 1}


def test_a_programming_error_surfaces() -> None:
    for error in (TypeError("bad call"), KeyError("missing"), AttributeError("no such field")):
        with pytest.raises(type(error)):
            backend_whose_engine_raises(error)._score([[5, 6]])
