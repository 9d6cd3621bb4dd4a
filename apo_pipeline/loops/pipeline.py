"""`Pipeline`: the actors of one run and the stage operations every loop is written in.

It owns the placement groups, the generation pool (`gen-*`), the judge pool (`judge-*`), the learner
group (`learner-*`) and the `weight-sync` actor, plus the run directory, the round log (metrics and
stage timer, `loops/round_log.py`), the round store (tables and checkpoints, `loops/round_store.py`)
and the evaluator (`loops/evaluation.py`). Each method is one stage of the papers' pseudo-code,
timed and logged: `generate`, `rank` / `win_rates`, `reference_logps`, `train`, `sync`, `evaluate`,
`checkpoint`. Used as a context manager, leaving the block shuts every actor down.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from apo_pipeline.config import BaseJobConfig
from apo_pipeline.config.sections import GenerationConfig
from apo_pipeline.engine.judge_pool import JudgePool
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.engine.buckets import bucket_bytes
from apo_pipeline.engine.synchronizer import make_synchronizer
from apo_pipeline.engine.weight_sync import WeightSync
from apo_pipeline.engine.worker_group import release_names, wait_names_free
from apo_pipeline.loops.evaluation import Evaluator
from apo_pipeline.loops.pairs import Built, with_engine_logps
from apo_pipeline.loops.resume import ResumePoint
from apo_pipeline.loops.round_log import RoundLog, train_fields, where
from apo_pipeline.loops.round_store import RoundStore
from apo_pipeline.loops.schedule import step_batches
from apo_pipeline.loops.stop import RunStopped
from apo_pipeline.monitoring import StageTimer, console, open_run_metrics
from apo_pipeline.ranking import PromptRanking, WinRates
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.seeds import derive_seed
from apo_pipeline.storage import RunDir, create_run_dir
from apo_pipeline.task import load_prompts, load_reward_fn, resolve_model
from apo_pipeline.task.prompts import as_user_turn

log = logging.getLogger("apo_pipeline")

REFERENCE = "reference"  # the learner's kept weights of pi_ref under `algorithm.reference: initial`

JUDGE_SETUP = ("chat", "label_variant", "label_mass", "label_masses", "probes")


class JudgeDroppedAll(RunStopped):
    """The judge failed to rank every prompt of a round (message: one line with the judge's counts)."""


@dataclass
class Prompts:
    """The run's train and held-out prompts (strings or chat conversations)."""

    train: list[Any]
    eval: list[Any]


class Pipeline:
    """All actors of a run. `unit` is "segment" (OnMC-PO) or "iteration" (APO, MC-PO epochs)."""

    def __init__(self, cfg: BaseJobConfig, run_dir: Path, unit: str) -> None:
        self.cfg = cfg
        self.unit = unit
        self.run_dir: RunDir = create_run_dir(run_dir.parent, run_dir.name, cfg)
        # A failure part-way releases what was built, so a job restore can build again under the same names.
        with ExitStack() as built:
            built.callback(release_names, role_names(cfg))
            self._build(cfg, built)
            built.pop_all()

    def _build(self, cfg: BaseJobConfig, built: ExitStack) -> None:
        """Metrics, model, prompts and every actor. What needs releasing besides the actors' names (the
        metrics file and trackers, the placement groups) goes on `built` as soon as it exists."""
        self.metrics = open_run_metrics(self.run_dir.root, cfg, console=console.active())
        built.callback(self.metrics.close)
        self.timer = StageTimer(self.metrics, progress=cfg.monitoring.progress)
        self.rounds = RoundLog(self.metrics, self.timer, self.unit)
        self.store = RoundStore(self.run_dir, self.rounds, cfg.checkpoint)
        self.model_dir = resolve_model(cfg.model.path, seed=cfg.seed)
        llm_judge = cfg.judge.backend == "llm"
        judge_dir = str(resolve_model(cfg.judge.model, seed=cfg.seed, key="judge.model")) if llm_judge else None
        self.prompts = self._load_prompts()
        self.reward_fn: Callable[[Any, str], float] | None = (
            load_reward_fn(cfg.judge.reward_fn) if cfg.judge.backend == "reward" else None
        )
        cl = cfg.cluster
        self.placement = Placement(cl, llm_judge=cfg.judge.backend == "llm", prefix=f"apo-{cfg.name}")
        built.callback(self.placement.remove)  # removing a group also kills the actors placed in it
        self.placement.create()
        # The three groups start at once (each constructor waits for its own actors): the engines load
        # their model while the judge loads its own and the learner ranks meet, so start-up takes the
        # slowest of them, not their sum (at scale: a 70B judge, an 8B policy on vLLM and DeepSpeed).
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="start") as start:
            pool = start.submit(
                GenerationPool, str(self.model_dir), cfg.model, cl, self.placement, sync=cfg.sync,
                max_prompt_tokens=cfg.data.max_prompt_tokens, overlong=cfg.data.overlong, seed=cfg.seed,
                max_restarts=cfg.fault.actor_restarts,
                logprobs_mode="raw_logprobs" if cfg.algorithm.reference_from_engines else "processed_logprobs",
            )
            judge = start.submit(JudgePool, cfg.judge, cl, self.placement, model_path=judge_dir, seed=cfg.seed,
                                 max_restarts=cfg.fault.actor_restarts)
            learner = start.submit(LearnerGroup, cfg.model.model_copy(update={"path": str(self.model_dir)}),
                                   cfg.learner, cfg.algorithm, self.placement, seed=cfg.seed)
        self.pool, self.judge, self.learner = pool.result(), judge.result(), learner.result()
        self.pool.restart_hook = self._resync_engines
        self.weight_sync = WeightSync.options(**self.placement.options("weight-sync")).remote(self.pool)
        self.synchronizer = make_synchronizer(self.learner, self.pool, self.weight_sync, bucket_bytes(cfg.sync.bucket_mb),
                                              colocate=cl.colocate)
        self.evaluator = Evaluator(
            cfg.eval, cfg.generation.max_tokens, pool=self.pool, judge=self.judge, learner=self.learner,
            reward_fn=self.reward_fn, run_dir=self.run_dir, unit=self.unit, prompts=self.prompts.eval, seed=cfg.seed,
            dynamics=bool(cfg.algorithm.dynamics_every), metrics=self.metrics,
        )
        self.round = 0  # the round whose stages run now (for the logs of an engine re-sync)
        # The weights the engines must hold (None: the training weights; a streamed round sets its
        # kept round-start weights) and a lock that keeps a restart's re-sync between learner calls.
        self.engine_weights: str | None = None
        self.learner_lock = threading.Lock()
        if llm_judge:  # which label tokens and chat setting the judge chose at start-up
            setup = {k: v for k, v in ray.get(self.judge.judges[0].metrics.remote()).items() if k in JUDGE_SETUP}
            self.metrics.log("judge_setup", **setup)
            log.info("llm judge: labels %s (probability mass %.3f on the probes), chat template %s",
                     setup.get("label_variant"), setup.get("label_mass", float("nan")), setup.get("chat"))
        log.info("pipeline ready: %d engine(s), %d learner rank(s), judge %s, run dir %s",
                 cl.num_engines, cl.learner_ranks, cfg.judge.backend, self.run_dir.root)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _load_prompts(self) -> Prompts:
        d = self.cfg.data
        train = load_prompts(d.prompts, split="train", limit=d.num_prompts, on_error=d.on_error, seed=self.cfg.seed)
        held = load_prompts(d.eval_prompts, split="eval", limit=d.num_eval_prompts, on_error=d.on_error, seed=self.cfg.seed)
        for name, ps in (("data.prompts", train), ("data.eval_prompts", held)):
            if ps.skipped:
                self.metrics.log("data", source=name, skipped=ps.skipped)
        if d.chat:  # plain-text prompts become a user turn, rendered with the policy's chat template
            return Prompts(*([as_user_turn(p) for p in ps.prompts] for ps in (train, held)))
        return Prompts(train.prompts, held.prompts)

    @property
    def batch_size(self) -> int:
        """Groups per optimizer step: micro batch x grad accumulation x learner ranks."""
        ln = self.cfg.learner
        return ln.micro_batch_size * ln.grad_accum * self.cfg.cluster.learner_ranks

    def generate(self, prompts: list[Any], index: int, gen: GenerationConfig | None = None,
                 chunk: int | None = None, first: int = 0) -> list[Rollout]:
        """K candidates per prompt from the current policy (seeded by run seed and round); a streamed
        round's `chunk` starts at prompt `first` of the round (the same candidates as unchunked)."""
        gen = gen or self.cfg.generation
        self.round = index
        with self.rounds.stage("generate", index, chunk) as st:
            rollouts = self.pool.sample(prompts, gen, seed=derive_seed(self.cfg.seed, "generate", index), first=first)
            last = self.pool.metrics()["last"]
            st["tokens"] = last["tokens"]
        if last["skipped"] or last["truncated"]:
            self.rounds.event("data", index, overlong_skipped=last["skipped"], overlong_truncated=last["truncated"])
        return rollouts

    def rank(self, rollouts: list[Rollout], index: int, chunk: int | None = None) -> list[PromptRanking]:
        """Iterative pairwise ranking (K-1 rounds) of every prompt's candidates by the judge (a
        streamed round's `chunk`: the round's loop checks that not every prompt was dropped)."""
        with self.rounds.stage("judge", index, chunk):
            result = self.judge.rank(
                [r.judge_prompt for r in rollouts], [[c.text for c in r.candidates] for r in rollouts],
                derive_seed(self.cfg.seed, "rank-ties", index))
        t = result.totals
        counts = self._log_judge(index, comparisons=t["comparisons"], asked=t["asked"], ties=t["ties"], failed=t["failures"],
                                 partial=t["partial_failures"], judge_calls=result.judge_calls, **where(None, 0, chunk))
        if chunk is None:
            self._stop_if_all_dropped(index, [p.winner for p in result.prompts], counts)
        return result.prompts

    def win_rates(self, rollouts: list[Rollout], index: int, chunk: int | None = None) -> list[WinRates]:
        """Full K x K win-rate matrices (SPPO); `chunk` as in `rank`."""
        with self.rounds.stage("judge", index, chunk):
            rates = self.judge.win_rates(
                [r.judge_prompt for r in rollouts], [[c.text for c in r.candidates] for r in rollouts])
        counts = self._log_judge(index, failed=sum(w.failures for w in rates), partial=sum(w.partial_failures for w in rates),
                                 **where(None, 0, chunk))
        if chunk is None:
            self._stop_if_all_dropped(index, [w.chosen for w in rates], counts)
        return rates

    def _stop_if_all_dropped(self, index: int, winners: list[int | None], counts: dict[str, Any]) -> None:
        """A round whose every prompt the judge failed to rank stops the run with one line naming the
        judge's counts (nothing to train on; a judge that scores nothing is misconfigured, and skipping
        rounds would hide that). Partly failed rounds train on the prompts that were ranked."""
        if winners and all(w is None for w in winners):
            detail = ", ".join(f"{k} {v}" for k, v in counts.items())
            raise JudgeDroppedAll(
                f"the judge dropped every prompt of {self.unit} {index} ({len(winners)} prompts; {detail}); check "
                "judge.labels / judge.template / judge.chat, e.g. with `apo-pipeline judge-eval`"
            )

    def _log_judge(self, index: int, **counts: int) -> dict[str, Any]:
        """One "judge" event: the ranking's counts (`failed`: comparisons never scored, counted, not
        guessed) plus what the judges counted since the last event (`JudgePool.take_counts`:
        comparisons/s; llm: scored, retried, overlong, errors, tokens/s, prefix-cache hits)."""
        fields = {**counts, **self.judge.take_counts()}
        self.rounds.event("judge", index, **fields)
        return fields

    def keep_reference(self) -> None:
        """pi_ref := the current policy, kept by the learner (fp32, 1/W per rank) for `reference_logps`
        and saved with every checkpoint (OnMC-PO with `algorithm.reference: initial`)."""
        self.learner.keep_weights(REFERENCE)

    def reference_logps(self, groups: list[TrainGroup], index: int, kept: bool = False) -> list[TrainGroup]:
        """Store log pi_ref of every candidate with the data: pi_ref = the current policy (the round's
        start), or with `kept` the weights of `keep_reference` (swapped in, never moved weights)."""
        return self._reference_pass(groups, index, REFERENCE if kept else None)

    def _reference_pass(self, groups: list[TrainGroup], index: int, weights: str | None,
                        chunk: int | None = None) -> list[TrainGroup]:
        """A learner pass storing log pi of every candidate under the kept `weights` (None: current)."""
        with self.rounds.stage("ref_logprobs", index, chunk) as st:
            with self.learner_lock:
                logps = self.learner.compute_logps(groups, weights)
            for group, logp in zip(groups, logps):
                group.ref_logps = list(logp)
            st["pairs"] = len(groups)
        return groups

    def reference_of(self, built: Built, rollouts: list[Rollout], index: int, weights: str | None = None,
                     chunk: int | None = None) -> list[TrainGroup]:
        """log pi_ref of every candidate of `built`: with `algorithm.reference_from_engines` the raw
        log-probs the engines returned while sampling (they hold the round-start weights), else a
        learner pass under the kept `weights` (None: the current weights, the round's start)."""
        if not self.cfg.algorithm.reference_from_engines:
            return self._reference_pass(built.groups, index, weights, chunk)
        with self.rounds.stage("ref_logprobs", index, chunk, source="engines") as st:
            groups = with_engine_logps(built, rollouts)
            st["pairs"] = len(groups)
        return groups

    def train(self, groups: list[TrainGroup], steps: int, index: int, step: int, done_steps: int = 0) -> int:
        """Optimizer steps `done_steps..steps-1` of round `index` over seeded batches of `groups`
        (`step`: the next global step); checkpoints every `checkpoint.every_steps` steps inside the
        round. Returns the next global step."""
        batches = step_batches(len(groups), self.batch_size, steps, seed=derive_seed(self.cfg.seed, "batches", index))
        first = step - done_steps
        self.synchronizer.before_train()  # colocated engines sleep (GPU: vLLM frees their memory for the learner)
        self.train_steps(groups, batches, index, first, range(done_steps, steps), steps)
        self.synchronizer.after_train()
        return first + steps

    def train_steps(self, groups: list[TrainGroup], batches: list[list[int]], index: int, first: int, todo: range,
                    steps: int, chunk: int | None = None, checkpoints: bool = True) -> None:
        """Steps `todo` of round `index` (`steps` in all; global step = `first` + n) on `batches`,
        checkpointing every `checkpoint.every_steps` steps inside the round when `checkpoints`."""
        every = self.cfg.checkpoint.every_steps
        with self.rounds.stage("train", index, chunk) as st:
            for n in self.timer.progress(todo, desc=f"train {self.unit} {index}", total=len(todo)):
                with self.learner_lock:
                    metrics = self.learner.train_step([groups[i] for i in batches[n]])
                self.rounds.event("train", index, step=first + n, **train_fields(metrics))
                if checkpoints and every and (n + 1) % every == 0 and n + 1 < steps:
                    self.checkpoint(index - 1, first + n + 1, round_steps=n + 1)
            st["pairs"] = sum(len(batches[n]) for n in todo)

    def sync(self, index: int, weights: str | None = None) -> None:
        """Push the learner's full weights (the kept weights `weights` when given) into every engine."""
        with self.rounds.stage("sync", index) as st:
            stats = self.synchronizer.sync(weights)
            st["bytes"], st["buckets"] = stats.bytes, stats.buckets

    def should_evaluate(self, index: int, last: int) -> bool:
        """Evaluate every `eval.every` rounds and always after the last one."""
        every = self.cfg.eval.every
        return index == last or (every > 0 and index % every == 0)

    def evaluate(self, index: int, policy: str | None = None) -> dict[str, float]:
        """Held-out reward and win-rate against the starting policy (index 0 = the start) of the
        engines' weights; `policy` names them in the eval event (APO: "hat" / "extrapolated")."""
        self.round = index
        with self.rounds.stage("eval", index):
            return self.evaluator.run(index, policy)

    def _resync_engines(self) -> None:
        """After a generation engine restarted: push the weights the engines must hold again (the
        training weights; in a streamed round its start, kept, as the learner has moved on). Runs on
        the thread that saw the restart, between two learner calls of the round's thread."""
        with self.learner_lock:
            self.rounds.event("fault", self.round, engine_restarts=self.pool.totals["engine_restarts"],
                              weights=self.engine_weights or "training")
            self.sync(self.round, self.engine_weights)

    def resume(self) -> ResumePoint:
        """Restore the newest valid checkpoint (learner, then engines) and cut metrics.jsonl back to
        what that checkpoint saw (to nothing without one), so the log reads as one uninterrupted run."""
        point, discarded = self.store.restore(self.learner)
        if discarded is not None:
            self.evaluator.restore_targets(point.done)
            self.sync(point.done)
            self.rounds.event("resume", point.done, step=point.step, round_steps=point.round_steps,
                              discarded_lines=discarded)
        self.metrics.log("actors", **self.actor_pids())
        return point

    def actor_pids(self) -> dict[str, int]:
        """Process id of every actor by its dashboard name (what an operator kills or inspects)."""
        pids = {**self.learner.group.actor_pids(), **self.pool.group.actor_pids(), **self.judge.group.actor_pids()}
        pids["weight-sync"] = ray.get(self.weight_sync.__ray_call__.remote(lambda actor: os.getpid()))
        return pids

    def checkpoint(self, done: int, step: int, round_steps: int = 0) -> None:
        """Checkpoint after round `done` plus `round_steps` steps of the next (next global step
        `step`), when enabled."""
        self.store.checkpoint(ResumePoint(done, step, round_steps), self.learner)

    def export_final(self, weights: str | None = None) -> Path:
        """The final policy as an HF model directory `<run>/final/`: the training weights, or the
        learner's kept weights `weights` (APO: pihat_{T+1})."""
        self.learner.export_hf(str(self.run_dir.final_dir), weights)
        return self.run_dir.final_dir

    def shutdown(self) -> None:
        """Kill every actor and free the placement; returns once the role names can be reused
        (a job restore builds the next pipeline in the same Ray namespace)."""
        groups = (self.learner.group, self.judge.group, self.pool.group)
        names = [name for group in groups for name in group.names] + ["weight-sync"]
        for group in groups:
            group.shutdown(wait=False)
        ray.kill(self.weight_sync)
        self.placement.remove()
        self.metrics.close()
        wait_names_free(names)


def role_names(cfg: BaseJobConfig) -> list[str]:
    """Every actor name a pipeline of `cfg` may create (`<role>-<i>`, `weight-sync`)."""
    cl = cfg.cluster
    names = [f"gen-{i}" for i in range(cl.num_engines)] + [f"learner-{i}" for i in range(cl.learner_ranks)]
    return names + [f"judge-{i}" for i in range(cl.judge_engines)] + ["weight-sync"]
