"""Training pairs/s: `LearnerGroup.train_step` (1 rank) against a plain DeepSpeed DPO loop.

Setup: two Ray actors on one local Ray, alive at the same time, 1 CPU each, both fp32 on
DeepSpeed's CPU accelerator with the same DeepSpeed config (`deepspeed_config`: ZeRO-2, AdamW,
micro-batch `MICRO` pairs, `PAIRS_PER_STEP / MICRO` accumulation steps) on the benchmark model.
Ours is rank 0 of a `LearnerGroup` (DPO, K = 2 candidates per group: the negative is the other
one, so the MC kernel costs no forward pass). The plain loop takes the pairs in input order (no
length bucketing), right-pads each micro-batch, scores it with full-sequence logits and a
full-vocabulary log_softmax, computes `preference_loss("dpo", ...)` and calls
`engine.backward` / `engine.step` per micro-batch, as a naive trainer does. Its reference
log-probs come either from a resident reference model (a no-grad forward per micro-batch, the
naive trainer; the key ratio) or from the same stored values ours trains on.

Ours reads reference log-probs stored with the data; the pipeline pays one no-grad pass per
candidate for them (`LearnerGroup.compute_logps`), timed here too, so the one-epoch figure
(each pair trained once) can charge it to ours. Every step uses the same `PAIRS_PER_STEP` pairs.

Key `learner_vs_deepspeed` = ours / plain-with-reference-model pairs/s (goal >= 1.0).
"""

from __future__ import annotations

import os
import socket
import tempfile

import ray
import torch
from torch import Tensor
from transformers import AutoConfig

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.batching import MicroBatch, collate
from apo_pipeline.engine.ds_config import deepspeed_config
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.losses import preference_loss
from apo_pipeline.rollout import TrainGroup
from common import MAX_MODEL_LEN, SEED, build_model, interleave, model_info, ratio, start_ray, summary, write_result

PAIRS_PER_STEP = 12
MICRO = 4
PROMPT_TOKENS = (4, 24)  # uniform, inclusive
RESPONSE_TOKENS = (2, 32)
LEARNER = LearnerConfig(micro_batch_size=MICRO, grad_accum=PAIRS_PER_STEP // MICRO)
DPO = AlgorithmConfig(loss="dpo", beta=0.1)
REPEATS = 4


def make_pairs(n: int, vocab_size: int, seed: int) -> list[TrainGroup]:
    """n groups of K = 2 random-token candidates of mixed lengths, preferred = 0 or 1 at random."""
    g = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(0, vocab_size, (length,), generator=g).tolist()

    def group() -> TrainGroup:
        prompt, candidates = tokens(*PROMPT_TOKENS), [tokens(*RESPONSE_TOKENS) for _ in range(2)]
        return TrainGroup(prompt, candidates, preferred=int(torch.randint(2, (1,), generator=g)))

    return [group() for _ in range(n)]


def naive_logps(model: torch.nn.Module, batch: MicroBatch) -> Tensor:
    """Summed response log-probs [B]: logits at every position, log_softmax over the full vocabulary."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(2, batch.input_ids[:, 1:, None]).squeeze(2)
    return (token_logps * batch.response_mask[:, 1:]).sum(dim=1)


@ray.remote(num_cpus=1, runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
class PlainDeepSpeedDPO:
    """A single-process DeepSpeed DPO trainer with a resident frozen reference model."""

    def __init__(self, model_dir: str) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="gloo")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.reference.eval().requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=deepspeed_config(LEARNER, world_size=1, use_gpu=False, dtype=torch.float32),
        )
        self.pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id

    def train_step(self, groups: list[TrainGroup], stored_refs: bool) -> None:
        """One optimizer step over `groups`, micro-batch by micro-batch in input order."""
        self.engine.train()
        for start in range(0, len(groups), MICRO):
            chunk = groups[start : start + MICRO]
            picks = [(g, c) for g in chunk for c in (g.preferred, 1 - g.preferred)]
            prompts, responses = [g.prompt_ids for g, _ in picks], [g.candidate_ids[c] for g, c in picks]
            batch = collate(prompts, responses, range(len(picks)), self.pad_id)
            policy = naive_logps(self.engine, batch).view(-1, 2)
            if stored_refs:
                ref = torch.tensor([g.ref_logps[c] for g, c in picks]).view(-1, 2)
            else:
                with torch.no_grad():
                    ref = naive_logps(self.reference, batch).view(-1, 2)
            loss = preference_loss("dpo", policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=DPO.beta).loss
            self.engine.backward(loss)
            self.engine.step()


def main() -> None:
    start_ray()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(tmp)
        plain = PlainDeepSpeedDPO.remote(model_dir)  # starts while the learner group starts
        placement = Placement(ClusterConfig(learner_ranks=1), prefix="bench-learner").create()
        model = ModelConfig(path=model_dir, max_model_len=MAX_MODEL_LEN)
        learner = LearnerGroup(model, LEARNER, DPO, placement, total_steps=1000, seed=SEED)
        groups = make_pairs(PAIRS_PER_STEP, AutoConfig.from_pretrained(model_dir).vocab_size, SEED)
        for group, refs in zip(groups, learner.compute_logps(groups)):
            group.ref_logps = refs

        seconds = interleave(
            {
                "ours": lambda: learner.train_step(groups),
                "ours_ref_pass": lambda: learner.compute_logps(groups),
                "plain_reference_model": lambda: ray.get(plain.train_step.remote(groups, stored_refs=False)),
                "plain_stored_refs": lambda: ray.get(plain.train_step.remote(groups, stored_refs=True)),
            },
            repeats=REPEATS,
        )
        timings = {name: summary(samples) for name, samples in seconds.items()}
        median = {name: t["median_s"] for name, t in timings.items()}
        naive, ours_epoch = median["plain_reference_model"], median["ours"] + median["ours_ref_pass"]
        result = {
            "ratio": ratio(naive, median["ours"]),  # the same pairs on both sides: the inverse time ratio
            "goal": ">= 1.0",
            "ratio_vs_plain_stored_refs": ratio(median["plain_stored_refs"], median["ours"]),
            "ratio_one_epoch_incl_ref_pass": ratio(naive, ours_epoch),
            "pairs_per_s": {name: PAIRS_PER_STEP / s for name, s in median.items() if name != "ours_ref_pass"},
            **timings,
            "workload": {"pairs_per_step": PAIRS_PER_STEP, "micro_batch_pairs": MICRO, "prompt_tokens": PROMPT_TOKENS,
                         "response_tokens": RESPONSE_TOKENS, "zero_stage": LEARNER.zero_stage, "dtype": "float32"},
            "model": model_info(model_dir),
        }
        write_result("learner_vs_deepspeed", result)
        stored, epoch = result["ratio_vs_plain_stored_refs"], result["ratio_one_epoch_incl_ref_pass"]
        print(f"learner_vs_deepspeed = {result['ratio']:.3f} (vs stored refs {stored:.3f}, one epoch incl. ref pass {epoch:.3f})")
        ray.kill(plain)
        learner.shutdown()
        placement.remove()
    ray.shutdown()


if __name__ == "__main__":
    main()
