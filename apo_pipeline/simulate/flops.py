"""Modelled stage rates of an LLM policy and judge on GPUs (docs/scaling.md's FLOP model).

Forward ~ 2 x params FLOP per token, forward + backward ~ 6 x params. Prefill-bound work (the
judge) runs at `prefill_mfu` of the GPU's dense bf16 peak, learner work (ZeRO-3 forward and
backward, the reference pass) at `train_mfu`. Decoding is memory-bound: a decode step of a batch
of B sequences of C tokens reads the weights and B x C tokens of KV cache, so one engine decodes
at most B / ((weight bytes + B C kv bytes) / bandwidth) tokens/s; `decode_efficiency` is the
fraction of that bound it reaches. Every number here is an assumption stated in docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from apo_pipeline.simulate.rates import StageCost, StageRates


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer, bf16 (2 bytes/param)."""

    name: str
    params: int
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of every layer, bf16."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * 2


LLAMA_8B = ModelShape("Llama-3.1-8B-Instruct", 8_030_261_248, 32, 8, 128)
LLAMA_70B = ModelShape("Llama-3.1-70B-Instruct", 70_553_706_496, 80, 8, 128)


@dataclass(frozen=True)
class GPUModel:
    """GPU and efficiency assumptions (H100 SXM 80GB by default).

    sync_bytes_per_s: the learner -> engines weight broadcast (nccl: a cross-node sender's share;
    cpu: device -> host -> object store -> device); checkpoint_bytes_per_s: the run directory's
    write bandwidth; switch_s: one vLLM sleep or wake of a colocated engine (15 GiB over PCIe and
    re-allocation); driver_per_prompt_s: the driver's bookkeeping per prompt (groups, Parquet
    tables; the CPU runs measure a few ms).
    """

    name: str = "H100 SXM 80GB"
    peak_flops: float = 989e12
    mem_bytes_per_s: float = 3.35e12
    prefill_mfu: float = 0.40
    train_mfu: float = 0.30
    decode_efficiency: float = 0.40
    decode_batch: int = 256
    sync_bytes_per_s: float = 25e9
    cpu_sync_bytes_per_s: float = 2e9
    checkpoint_bytes_per_s: float = 2e9
    switch_s: float = 2.0
    driver_per_prompt_s: float = 0.005


@dataclass(frozen=True)
class TokenShape:
    """Average lengths in tokens: prompt, response, and the judge template around two responses."""

    prompt: int = 200
    response: int = 500
    judge_template: int = 40

    @property
    def sequence(self) -> int:
        return self.prompt + self.response

    @property
    def judge_request(self) -> int:
        return self.judge_template + self.prompt + 2 * self.response


def decode_tokens_per_s(policy: ModelShape, gpu: GPUModel, context: int) -> float:
    """Tokens/s of one TP-1 engine decoding `gpu.decode_batch` sequences of `context` tokens."""
    step_bytes = policy.weight_bytes + gpu.decode_batch * context * policy.kv_bytes_per_token
    return gpu.decode_efficiency * gpu.decode_batch * gpu.mem_bytes_per_s / step_bytes


def judge_request_s(judge: ModelShape, gpu: GPUModel, tokens: TokenShape, tp: int) -> float:
    """Seconds of one comparison on one judge engine of `tp` GPUs (prefill; one label token)."""
    return tokens.judge_request * 2.0 * judge.params / (tp * gpu.peak_flops * gpu.prefill_mfu)


def train_flop_per_pair(policy: ModelShape, tokens: TokenShape, scored: int) -> float:
    """FLOP of one pair in a step: forward + backward of chosen and rejected, plus no-grad forwards
    of `scored` candidates (OnMC-PO's MC kernel scores all K under the current policy; 0 for APO)."""
    return (6.0 * 2 + 2.0 * scored) * policy.params * tokens.sequence


def gpu_rates(
    policy: ModelShape = LLAMA_8B,
    judge: ModelShape = LLAMA_70B,
    gpu: GPUModel = GPUModel(),
    tokens: TokenShape = TokenShape(),
    *,
    candidates_per_prompt: int = 6,
    scored_per_pair: int = 6,
    judge_tp: int = 4,
    sync_backend: str = "nccl",
    greedy_eval: bool = True,
) -> StageRates:
    """Per-actor stage costs of the FLOP model (units as in `apo_pipeline.simulate.rates`)."""
    prefill = 2.0 * policy.params / (gpu.peak_flops * gpu.prefill_mfu)  # s per token, one GPU
    learner = gpu.peak_flops * gpu.train_mfu
    candidate = (tokens.response / decode_tokens_per_s(policy, gpu, tokens.sequence)
                 + tokens.prompt * prefill / candidates_per_prompt)  # the K samples share the prompt
    request = judge_request_s(judge, gpu, tokens, judge_tp)
    sync_bw = gpu.sync_bytes_per_s if sync_backend == "nccl" else gpu.cpu_sync_bytes_per_s
    checkpoint_bytes = 16.0 * policy.params  # ZeRO-3 partitions (2 + 12 B/param) + the HF export (2 B)
    return StageRates({
        "generate": StageCost(0.0, candidate),
        "judge": StageCost(0.0, request),
        "ref_logprobs": StageCost(0.0, 2.0 * policy.params * tokens.sequence / learner),
        "train": StageCost(0.0, train_flop_per_pair(policy, tokens, scored_per_pair) / learner),
        "sync": StageCost(policy.weight_bytes / sync_bw, 0.0),
        "eval": StageCost(0.0, (2 if greedy_eval else 1) * (tokens.response / decode_tokens_per_s(
            policy, gpu, tokens.sequence) + tokens.prompt * prefill)),
        "eval_judge": StageCost(0.0, request),
        "checkpoint": StageCost(checkpoint_bytes / gpu.checkpoint_bytes_per_s, 0.0),
        "driver": StageCost(0.0, gpu.driver_per_prompt_s),
    }, source=f"modelled: FLOP model, {policy.name} policy, {judge.name} judge (TP {judge_tp}), {gpu.name}")
