"""Placement across nodes on Ray's simulated multi-node cluster (`ray.cluster_utils.Cluster`).

A head with 1 CPU and two worker nodes with 1 CPU each: the learner's 2 ranks (one bundle of 1
CPU each) cannot fit on one node, so its placement group spans two nodes. A real 2-rank
DeepSpeed ZeRO-2 group forms across them (gloo) and computes log-probs, and a real vLLM engine
lands on the remaining node. The check runs in a subprocess, since it needs its own Ray and the
other integration tests share one Ray per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def main(model_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig
    from apo_pipeline.config.sections import GenerationConfig
    from apo_pipeline.engine.learner_group import LearnerGroup
    from apo_pipeline.engine.placement import Placement
    from apo_pipeline.engine.pool import GenerationPool
    from apo_pipeline.rollout import TrainGroup

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    cl = ClusterConfig(num_engines=1, learner_ranks=2, cpus_per_actor=1)
    placement = Placement(cl, prefix="multinode").create(timeout_s=120)
    model = ModelConfig(path=model_dir)
    learner = LearnerGroup(model, LearnerConfig(zero_stage=2), AlgorithmConfig(), placement, total_steps=1)
    pool = GenerationPool(model_dir, model, cl, placement)
    nodes = {
        "learner": ray.get([r.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for r in learner.ranks]),
        "gen": ray.get([e.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for e in pool.engines]),
    }
    logps = learner.compute_logps([TrainGroup([5, 6, 7], [[8, 9], [7]], preferred=0)])[0]
    rollouts = pool.sample(["reverse:123="], GenerationConfig(temperatures=[1.0], n_per_temperature=2, max_tokens=4), seed=0)
    print(json.dumps({"nodes": nodes, "logps": logps, "candidates": len(rollouts[0].candidates), "alive": len(ray.nodes())}))
    ray.shutdown()
    cluster.shutdown()


def test_actors_placed_across_simulated_nodes(tmp_path):
    from apo_pipeline.task.tiny_model import random_tiny_model

    model_dir = random_tiny_model(tmp_path / "model", seed=0)
    proc = subprocess.run([sys.executable, __file__, str(model_dir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    learner_nodes, gen_nodes = report["nodes"]["learner"], report["nodes"]["gen"]
    assert report["alive"] == 3
    assert len(set(learner_nodes)) == 2, "the 2 learner ranks must sit on 2 different nodes"
    assert gen_nodes[0] not in learner_nodes, "the engine takes the node the learner left free"
    assert len(report["logps"]) == 2 and all(v < 0 for v in report["logps"])
    assert report["candidates"] == 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1])
