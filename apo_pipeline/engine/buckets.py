"""The weight-bucket format shared by the learner (sender) and the engines (receiver). No Ray.

The learner gathers its full parameters bucket by bucket (`make_buckets` over their shapes),
packs each bucket as raw bytes (`pack_bucket` -> `PackedBucket`) and the engine's object-store
backend (`weight_transfer_cpu.py`, registered in vLLM as `CPU_WEIGHT_TRANSFER_BACKEND`) views the
bytes as tensors again (`PackedBucket.tensors`) and loads them. `SyncStats` is what one sync moved.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

MIB = 1 << 20
CPU_WEIGHT_TRANSFER_BACKEND = "apo_object_store"  # vLLM weight-transfer backend name of weight_transfer_cpu.py


def bucket_bytes(bucket_mb: float) -> int:
    """A bucket size in MiB (`sync.bucket_mb`) as bytes (at least 1)."""
    return max(1, int(bucket_mb * MIB))


def make_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Group tensors, in order, into dicts of at most `max_bytes` bytes each.

    A tensor larger than `max_bytes` gets a bucket of its own. Pure: only shapes and dtypes are
    read (meta tensors work), nothing is copied. ValueError on a repeated name or `max_bytes` <= 0.
    """
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {max_bytes} bytes")
    seen: set[str] = set()
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"parameter {name!r} appears twice in the weights to sync")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


@dataclass
class PackedBucket:
    """Tensors as raw bytes, which Ray stores and reads back zero-copy (any dtype, bf16 too).

    `data[i]` is a flat uint8 array holding `names[i]` of dtype `torch.<dtypes[i]>`, `shapes[i]`.
    """

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    data: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.data)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """`(name, tensor)` views of the bytes (read-only memory when fetched from Ray)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return [
                (name, torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape))
                for name, dtype, shape, raw in zip(self.names, self.dtypes, self.shapes, self.data)
            ]


def pack_bucket(bucket: dict[str, torch.Tensor]) -> PackedBucket:
    """A bucket of (CPU or device) tensors as a `PackedBucket` (copies device tensors to CPU)."""
    flat = {name: t.detach().to("cpu").contiguous().reshape(-1) for name, t in bucket.items()}
    return PackedBucket(
        names=list(bucket),
        dtypes=[str(t.dtype).removeprefix("torch.") for t in bucket.values()],
        shapes=[tuple(t.shape) for t in bucket.values()],
        data=[t.view(torch.uint8).numpy() for t in flat.values()],
    )


@dataclass
class SyncStats:
    """One sync: wall `seconds`, `bytes` per engine, `buckets`, `engines` fed."""

    seconds: float
    bytes: int
    buckets: int
    engines: int

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / max(self.seconds, 1e-9)
