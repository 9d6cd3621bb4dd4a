"""TRL's online DPO trainer on the end-to-end workload (run by bench_end_to_end.py in its own process).

`python bench/trl_online_dpo.py MODEL_DIR PROMPTS_JSONL OUT_JSON`: trains `OnlineDPOTrainer`
(trl.experimental.online_dpo, TRL 1.16) for one epoch over the prompts with the settings of
`workload.py`, generating with vLLM colocated in this process (`use_vllm=True`,
`vllm_mode="colocate"`: the fast path TRL documents), and writes the wall time at the end of every
optimizer step and the (end, seconds) of every generation call and weight load.

TRL 1.16 supports vLLM up to 0.31. Under vLLM 0.32 its colocated weight load (`load_weights` on
the live vLLM model, one parameter at a time) fails: vLLM 0.32 drops the parameters'
`weight_loader` after its post-load processing. `TRLOnlineDPO` runs TRL's own loading code inside
vLLM's layerwise-reload pair (`initialize_layerwise_reload` / `finalize_layerwise_reload`, as our
engines do) and changes nothing else.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the workload needs a few MiB

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer  # noqa: E402
from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload  # noqa: E402

from apo_pipeline.task.synthetic import latent_reward  # noqa: E402
from workload import WORKLOAD, read_prompts  # noqa: E402


class TRLOnlineDPO(OnlineDPOTrainer):
    """TRL's trainer, its colocated weight load wrapped in vLLM 0.32's layerwise-reload pair; the
    wall time of each generation call (weight load included) and of each weight load is recorded
    as (end, seconds) in `timings["generate"]` / `timings["sync"]`."""

    timings: dict[str, list[tuple[float, float]]]

    def _timed(self, name: str, call, *args):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        out = call(*args)
        end = time.perf_counter()
        self.timings.setdefault(name, []).append((end, end - start))
        return out

    def _generate_vllm(self, prompts, images=None):  # noqa: ANN001, ANN202 (TRL's signature)
        return self._timed("generate", super()._generate_vllm, prompts, images)

    def _move_model_to_vllm_inner(self) -> None:
        engine = self.llm.llm_engine
        model = engine.model_executor.driver_worker.model_runner.model

        def load() -> None:
            initialize_layerwise_reload(model)
            super(TRLOnlineDPO, self)._move_model_to_vllm_inner()
            finalize_layerwise_reload(model, engine.model_config)

        self._timed("sync", load)


class StepTimes(TrainerCallback):
    """perf_counter() at the end of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003 (TrainerCallback's signature)
        self.times.append(time.perf_counter())


def reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The built-in task's latent reward r*, the function our reward judge compares with."""
    return [latent_reward(p, c) for p, c in zip(prompts, completions)]


def main(model_dir: str, prompts_file: str, out: str) -> None:
    w = WORKLOAD
    prompts = read_prompts(Path(prompts_file))
    args = OnlineDPOConfig(
        output_dir=str(Path(out).parent / "trl-out"),
        per_device_train_batch_size=w.pairs_per_step,
        max_steps=len(prompts) // w.pairs_per_step,
        learning_rate=w.lr,
        lr_scheduler_type="constant",
        max_grad_norm=w.max_grad_norm,
        beta=w.beta,
        temperature=w.temperature,
        max_new_tokens=w.max_tokens,
        max_length=w.max_model_len - w.max_tokens,
        use_vllm=True,
        vllm_mode="colocate",
        use_cpu=True,
        bf16=False,
        seed=w.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=w.segment_prompts // w.pairs_per_step,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    steps = StepTimes()
    trainer = TRLOnlineDPO(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[steps],
    )
    trainer.timings = {}
    built = time.perf_counter()
    trainer.train()
    record = {"init_s": built - start, "train_start": built, "step_ends": steps.times, "timings": trainer.timings}
    Path(out).write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:4])
