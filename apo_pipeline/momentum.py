"""APO momentum extrapolation on parameters (seed 000): theta <- thetahat + alpha (thetahat - thetahat_prev).

`current` holds thetahat_{t+1} (the parameters after this iteration's training) and is
overwritten with theta_{t+1}; `previous` holds thetahat_t. Each tensor is processed in chunks of
`chunk_numel` elements, computed in fp32 and written back in the tensor's dtype (fp32, bf16, fp16),
so the extra memory is about three fp32 chunks whatever the model size. `previous` may live on
another device (e.g. CPU) than `current`; chunks are moved one at a time.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor

DEFAULT_CHUNK_NUMEL = 2**22


def extrapolate_(
    current: Mapping[str, Tensor],
    previous: Mapping[str, Tensor],
    alpha: float,
    chunk_numel: int = DEFAULT_CHUNK_NUMEL,
) -> None:
    """In place on `current`: theta = current + alpha * (current - previous), key by key.

    Keys and shapes must match exactly; alpha = 0 leaves `current` untouched (exact identity)."""
    missing, extra = sorted(set(previous) - set(current)), sorted(set(current) - set(previous))
    if missing or extra:
        raise ValueError(f"extrapolate_: key mismatch; only in previous: {missing[:5]}, only in current: {extra[:5]}")
    extrapolate_pairs_(current.items(), previous, alpha, chunk_numel)


def extrapolate_pairs_(
    pairs: Iterable[tuple[str, Tensor]],
    previous: Mapping[str, Tensor],
    alpha: float,
    chunk_numel: int = DEFAULT_CHUNK_NUMEL,
) -> list[str]:
    """In place on each tensor of `pairs` (name, tensor), looking its predecessor up in `previous`.

    For callers that see parameters a bucket at a time (ZeRO-3: gather a bucket, call this, release
    it). Returns the names processed, so the caller can check it covered every key of `previous`."""
    _check_alpha(alpha, chunk_numel)
    done = []
    for name, tensor in pairs:
        if name not in previous:
            raise ValueError(f"extrapolate_: {name!r} has no entry in previous")
        extrapolate_tensor_(tensor, previous[name], alpha, chunk_numel, name=name)
        done.append(name)
    return done


@torch.no_grad()
def extrapolate_tensor_(
    current: Tensor, previous: Tensor, alpha: float, chunk_numel: int = DEFAULT_CHUNK_NUMEL, *, name: str = "tensor"
) -> None:
    """One tensor in place: current = current + alpha * (current - previous), chunk by chunk in fp32."""
    _check_alpha(alpha, chunk_numel)
    if current.shape != previous.shape:
        raise ValueError(f"extrapolate_: {name!r} shape {tuple(current.shape)} != previous {tuple(previous.shape)}")
    if not current.is_floating_point() or not previous.is_floating_point():
        raise ValueError(f"extrapolate_: {name!r} is not a floating-point tensor ({current.dtype}, {previous.dtype})")
    if not current.is_contiguous():
        raise ValueError(f"extrapolate_: {name!r} is not contiguous; pass a contiguous tensor")
    if alpha == 0.0:
        return
    flat_cur, flat_prev = current.view(-1), previous.reshape(-1)
    for start in range(0, flat_cur.numel(), chunk_numel):
        out = flat_cur[start : start + chunk_numel]
        work = out.float()  # `out` itself when already fp32
        step = work - flat_prev[start : start + chunk_numel].to(device=work.device, dtype=torch.float32)
        work.add_(step, alpha=alpha)
        if work.data_ptr() != out.data_ptr():
            out.copy_(work)


def snapshot(pairs: Iterable[tuple[str, Tensor]], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Detached copies of (name, tensor) pairs on `device`: keep thetahat_{t+1} before extrapolating."""
    return {name: tensor.detach().to(device=device, copy=True) for name, tensor in pairs}


def _check_alpha(alpha: float, chunk_numel: int) -> None:
    if not isinstance(alpha, (int, float)) or alpha != alpha:
        raise ValueError(f"extrapolate_: alpha must be a float, got {alpha!r}")
    if chunk_numel < 1:
        raise ValueError(f"extrapolate_: chunk_numel must be >= 1, got {chunk_numel}")
