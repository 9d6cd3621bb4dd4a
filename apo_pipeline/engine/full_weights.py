"""Full (un-partitioned) weights of a DeepSpeed-wrapped model under any ZeRO stage.

Every function here is a collective under ZeRO: all ranks call it with the same arguments, in the
same order, or they deadlock. Parameters are visited in `module.named_parameters()` order (HF
checkpoint names; tied weights once).

Two copies of each weight exist once an optimizer is set up: the model's parameter (fp32 on CPU,
bf16 on GPU; a 1/W shard under ZeRO-3) and the optimizer's fp32 master (a 1/W shard under ZeRO
1-3; the parameter itself under ZeRO-0 in fp32). Writing a weight updates both, or the next
optimizer step would copy the stale master back over the model (`set_full_weight_`).
"""

from __future__ import annotations

from collections.abc import Iterator

import deepspeed
import deepspeed.comm as dist
import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param, safe_set_local_fp32_param
from torch import Tensor

from apo_pipeline.engine.buckets import make_buckets
from apo_pipeline.momentum import extrapolate_tensor_


def full_shape(param: Tensor) -> torch.Size:
    """The parameter's un-partitioned shape (ZeRO-3 keeps it in `ds_shape`)."""
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


def gathered_buckets(module: torch.nn.Module, bucket_bytes: int) -> Iterator[dict[str, Tensor]]:
    """Buckets {name: full parameter} of at most `bucket_bytes` (one parameter may exceed it).

    Under ZeRO-3 each bucket is gathered (`deepspeed.zero.GatheredParameters`) for the time the
    consumer holds it and released when the iteration moves on: copy what you keep. Model dtype.
    """
    params = dict(module.named_parameters())
    shapes = ((name, torch.empty(full_shape(p), dtype=p.dtype, device="meta")) for name, p in params.items())
    for bucket in make_buckets(shapes, bucket_bytes):
        with deepspeed.zero.GatheredParameters([params[name] for name in bucket], modifier_rank=None):
            yield {name: params[name].data for name in bucket}


def full_master(param: Tensor) -> Tensor:
    """The full fp32 master weight, on the accelerator, a fresh tensor (collective under ZeRO 1-3)."""
    master = safe_get_full_fp32_param(param)
    if master is not None:
        return master.reshape(full_shape(param)).clone()
    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
        return param.data.float().clone()


def set_full_weight_(param: Tensor, value: Tensor) -> None:
    """Write the full fp32 `value` (identical on every rank) into the master copy and the parameter."""
    if hasattr(param, "ds_id"):
        _set_zero3_master(param, value)
    else:
        safe_set_full_fp32_param(param, value)
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        param.data.copy_(value.reshape(param.data.shape))


def _set_zero3_master(param: Tensor, value: Tensor) -> None:
    """This rank's slice of `value` into its fp32 master shard (the full-tensor setter of DeepSpeed
    0.19 slices past the end on the last rank when numel is not a multiple of the world size)."""
    shard = param.ds_tensor.numel()
    flat = value.reshape(-1).to(torch.float32)
    padded = torch.nn.functional.pad(flat, (0, shard * dist.get_world_size() - flat.numel()))
    safe_set_local_fp32_param(param, padded.narrow(0, shard * dist.get_rank(), shard))


def owner_of(index: int, world_size: int) -> int:
    """The rank that keeps parameter `index`'s APO snapshot: round robin, so each keeps ~1/W."""
    return index % world_size


def snapshot_masters(module: torch.nn.Module) -> dict[str, Tensor]:
    """fp32 CPU copies of the full master weights this rank owns (see `owner_of`)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    owned = {}
    for index, (name, param) in enumerate(module.named_parameters()):
        master = full_master(param)
        if owner_of(index, world) == rank:
            owned[name] = master.to("cpu")
    return owned


def write_masters_(module: torch.nn.Module, owned: dict[str, Tensor]) -> None:
    """Set every weight (fp32 master and parameter) to a kept copy: the owner of each weight (see
    `owner_of`) broadcasts it from `owned`, its share of a `snapshot_masters` result; every rank
    writes it. Values round-trip exactly (fp32 in, fp32 out)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    for index, (name, param) in enumerate(module.named_parameters()):
        owner = owner_of(index, world)
        if owner == rank:
            if name not in owned:
                raise KeyError(f"no kept copy of {name!r} on rank {rank}")
            value = owned[name].to(param.device, torch.float32, copy=True)
        else:
            value = torch.empty(full_shape(param), dtype=torch.float32, device=param.device)
        dist.broadcast(value, src=owner)
        set_full_weight_(param, value)


def extrapolate_masters_(module: torch.nn.Module, previous: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """APO: w <- w + alpha (w - previous) on every full master weight and parameter.

    `previous` (consumed) is this rank's share of the last snapshot, thetahat_t. The owner of each
    weight computes the update in fp32 (apo_pipeline.momentum) and broadcasts it; every rank writes
    it back. Returns this rank's share of the weights as they were before the update
    (thetahat_{t+1}), the `previous` of the next extrapolation.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    kept = {}
    for index, (name, param) in enumerate(module.named_parameters()):
        value = full_master(param)
        owner = owner_of(index, world)
        if owner == rank:
            if name not in previous:
                raise KeyError(f"no APO snapshot of {name!r} on rank {rank}; call snapshot_weights() first")
            kept[name] = value.to("cpu", copy=True)
            extrapolate_tensor_(value, previous.pop(name), alpha, name=name)
        dist.broadcast(value, src=owner)
        set_full_weight_(param, value)
    return kept
