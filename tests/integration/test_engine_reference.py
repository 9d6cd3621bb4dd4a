"""`algorithm.reference_from_engines`: the raw log-probs vLLM returns while sampling are the
learner's log pi of the same weights (fp32 CPU), so they can serve as log pi_ref of the round.

One engine (raw log-probs) and one learner rank on the tiny model, in their own placement and Ray
namespace beside the session's actors.
"""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import RayTaskError

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, GenerationConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.loops.pairs import candidate_groups, with_engine_logps
from apo_pipeline.ranking import PromptRanking

pytestmark = pytest.mark.slow

CLUSTER = ClusterConfig(num_engines=1, learner_ranks=1, cpus_per_actor=0.1)
PROMPTS = ["reverse 3 1 4 =", "reverse 2 7 1 8 =", "reverse 9 0 =", "reverse 6 5 4 3 2 ="]
# Temperatures and top-p away from 1: processed log-probs (log q_T) would differ from log pi.
GEN = GenerationConfig(temperatures=[0.6, 1.3], n_per_temperature=2, max_tokens=12, top_p=0.9)


def test_engine_sampling_logps_equal_the_learners_reference_pass(ray_session, tiny_model_dir) -> None:
    placement = Placement(CLUSTER, prefix="apo-engref", namespace="engref").create()
    model = ModelConfig(path=tiny_model_dir)
    pool = GenerationPool(tiny_model_dir, model, CLUSTER, placement, logprobs_mode="raw_logprobs")
    learner = LearnerGroup(model, LearnerConfig(), AlgorithmConfig(), placement)  # no LR schedule set
    try:
        rollouts = pool.sample(PROMPTS, GEN, seed=3)
        built = candidate_groups(rollouts, [PromptRanking(winner=0)] * len(rollouts))
        engine = [list(g.ref_logps) for g in (with_engine_logps(built, rollouts))]
        learned = learner.compute_logps(built.groups)
        pairs = [(e, w) for es, ws in zip(engine, learned) for e, w in zip(es, ws)]
        assert len(pairs) == len(PROMPTS) * GEN.num_candidates
        worst = max(abs(e - w) for e, w in pairs)
        assert worst <= 1e-3, f"engine vs learner log pi differ by up to {worst:.2e} nats per sequence"
        assert max(abs(w) for _, w in pairs) > 1.0  # real sequences, not empty ones
        with pytest.raises(RayTaskError, match="no learning-rate schedule"):  # the loops set it first
            learner.train_step(built.groups[:1])
    finally:
        for engine_actor in pool.engines:
            ray.kill(engine_actor)
        learner.shutdown()
        placement.remove()
