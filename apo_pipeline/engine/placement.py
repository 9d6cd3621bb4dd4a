"""Turn `ClusterConfig` into Ray placement groups and per-actor `.options(...)`.

Roles and names (what the Ray dashboard shows): `gen-<i>`, `judge-<i>`, `learner-<i>`, `weight-sync`.
One placement group per role (per engine for generation / judge engines, since each may span
TP GPUs); the reward judge (`llm_judge=False`) takes no bundle. With `colocate`, generation engines share the learner's bundles (time-sharing; vLLM
sleep mode on GPU) and take a fraction of each GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from apo_pipeline.config.sections import ClusterConfig
from apo_pipeline.monitoring.actor_logs import actor_env

ROLES = ("gen", "judge", "learner", "weight-sync")
COLOCATED_GPU_SHARE = 0.4


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


@dataclass
class Placement:
    """Placement groups for one pipeline. Call `create()` once, `options(role, i)` per actor.

    Groups are named `<prefix>-<role>-<i>`; give each pipeline of one Ray session its own prefix.
    Actors keep their dashboard names (`gen-0`, ...); a second pipeline in the same Ray session also
    needs its own Ray `namespace` for them."""

    cluster: ClusterConfig
    llm_judge: bool = False
    prefix: str = "apo"
    namespace: str | None = None
    groups: dict[str, list[PlacementGroup]] = field(default_factory=dict)

    def _specs(self) -> dict[str, list[list[dict[str, float]]]]:
        c = self.cluster
        gpu = 1.0 if c.use_gpu else 0.0
        learner = [[_bundle(c.cpus_per_actor, gpu) for _ in range(c.learner_ranks)]]
        specs: dict[str, list[list[dict[str, float]]]] = {"learner": learner}
        if not c.colocate:
            specs["gen"] = [[_bundle(c.cpus_per_actor, gpu) for _ in range(c.engine_tp)] for _ in range(c.num_engines)]
        if self.llm_judge:
            specs["judge"] = [[_bundle(c.cpus_per_actor, gpu) for _ in range(c.judge_tp)] for _ in range(c.judge_engines)]
        return specs

    def create(self, timeout_s: float = 120.0) -> "Placement":
        """Reserve every bundle; raises TimeoutError naming the role whose resources never came."""
        for role, group_specs in self._specs().items():
            self.groups[role] = [placement_group(b, strategy="PACK", name=f"{self.prefix}-{role}-{i}") for i, b in enumerate(group_specs)]
        for role, pgs in self.groups.items():
            ready, _ = ray.wait([pg.ready() for pg in pgs], num_returns=len(pgs), timeout=timeout_s)
            if len(ready) < len(pgs):
                raise TimeoutError(
                    f"cluster: the {role} placement group could not be scheduled in {timeout_s:.0f} s; "
                    f"cluster resources {ray.cluster_resources()} do not fit cluster.* of the config"
                )
        return self

    def options(self, role: str, index: int = 0, env_vars: dict[str, str] | None = None) -> dict:
        """Keyword arguments for `ActorClass.options(...)` of actor `role`-`index` (`env_vars`: its own)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {ROLES}")
        c = self.cluster
        name = role if role == "weight-sync" else f"{role}-{index}"
        # The actor's name in its runtime env: its output goes to <run>/logs/<name>.log (monitoring.actor_logs).
        opts: dict = {"name": name, "num_cpus": c.cpus_per_actor, "runtime_env": actor_env(name, **(env_vars or {}))}
        if self.namespace is not None:
            opts["namespace"] = self.namespace
        if role == "weight-sync" or (role == "judge" and not self.llm_judge):  # the reward judge needs no bundle
            opts["num_cpus"] = 0
            return opts
        if role == "gen" and c.colocate:
            pg, bundle = self.groups["learner"][0], index % c.learner_ranks
            opts["num_cpus"] = 0
            opts["num_gpus"] = COLOCATED_GPU_SHARE if c.use_gpu else 0
        elif role == "learner":
            pg, bundle = self.groups["learner"][0], index
            opts["num_gpus"] = (1.0 - COLOCATED_GPU_SHARE if c.colocate else 1.0) if c.use_gpu else 0
        else:
            pg, bundle = self.groups[role][index], 0
            tp = c.engine_tp if role == "gen" else c.judge_tp
            # With TP > 1 vLLM's Ray executor places its own workers in this group's bundles.
            opts["num_gpus"] = (1.0 if tp == 1 else 0) if c.use_gpu else 0
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=True
        )
        return opts

    def remove(self) -> None:
        for pgs in self.groups.values():
            for pg in pgs:
                remove_placement_group(pg)
        self.groups.clear()
