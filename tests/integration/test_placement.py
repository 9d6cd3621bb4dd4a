"""Placement on a real local Ray: colocated engines share the learner's bundles, names by role."""

from __future__ import annotations

import pytest
import ray

from apo_pipeline.config.sections import ClusterConfig
from apo_pipeline.engine.placement import Placement

pytestmark = pytest.mark.slow


@ray.remote
class Probe:
    def placement_group_id(self) -> str | None:
        return ray.get_runtime_context().get_placement_group_id()


def test_colocated_engines_share_the_learner_bundles(ray_session: None) -> None:
    placement = Placement(ClusterConfig(colocate=True, num_engines=2, learner_ranks=2), prefix="colocated").create()
    try:
        assert set(placement.groups) == {"learner"}, "colocated engines reserve no bundles of their own"
        learner_pg = placement.groups["learner"][0]
        gen = [placement.options("gen", i) for i in range(2)]
        assert [o["name"] for o in gen] == ["gen-0", "gen-1"] and all(o["num_cpus"] == 0 for o in gen)
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in gen] == [0, 1]
        probes = [Probe.options(**{**o, "name": f"colocated-{o['name']}"}).remote() for o in gen]
        assert ray.get([p.placement_group_id.remote() for p in probes]) == [learner_pg.id.hex()] * 2
        for p in probes:
            ray.kill(p)
    finally:
        placement.remove()


def test_engines_are_named_by_role(gen_pool) -> None:
    assert [ray.get_actor(f"gen-{i}")._actor_id for i in range(2)] == [e._actor_id for e in gen_pool.engines]
