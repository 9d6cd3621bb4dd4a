"""A vLLM weight-transfer backend that reads weight buckets from the Ray object store.

Registered with `WeightTransferEngineFactory` under `CPU_WEIGHT_TRANSFER_BACKEND` in the engine
actor's process before its `LLM` is built, selected with
`LLM(..., weight_transfer_config={"backend": CPU_WEIGHT_TRANSFER_BACKEND})`, and driven through
vLLM's worker API: `init_weight_transfer_engine({})`, `start_weight_update`,
`update_weights({"bucket": ObjectRef[PackedBucket]})` once per bucket, `finish_weight_update`.

Transport: the learner `ray.put`s each bucket (a `PackedBucket`: raw bytes as numpy arrays);
the worker `ray.get`s it. numpy buffers come out of the object store zero-copy (a 64 MiB
bucket: ~0.5 ms to get, against ~360 ms for the same bytes as a dict of torch tensors, which
Ray pickles), so the only copy on the engine side is `load_weights` into the parameters; it works
unchanged across nodes (Ray moves the object). The layerwise-reload pair around the buckets
is what makes `load_weights` valid after vLLM's post-load processing of the parameters.

Tied embeddings: the reload re-processes only layers that received weights. A tied `lm_head`
receives none (its weight is the embedding's, skipped by `load_weights`), so on CPU the packed
copy its GEMM was built from at start-up (oneDNN / sgl `cpu_linear`) would keep the old weights:
greedy tokens then drift from the learner's. `finish_weight_update` re-runs the head's processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

from apo_pipeline.engine.buckets import CPU_WEIGHT_TRANSFER_BACKEND, PackedBucket


@dataclass
class ObjectStoreInitInfo(WeightTransferInitInfo):
    """Nothing to set up: the object store needs no connection."""


@dataclass
class ObjectStoreUpdateInfo(WeightTransferUpdateInfo):
    """One bucket: a Ray `ObjectRef` of a `PackedBucket`."""

    bucket: ray.ObjectRef


class ObjectStoreWeightTransferEngine(WeightTransferEngine[ObjectStoreInitInfo, ObjectStoreUpdateInfo]):
    """Loads checkpoint-format buckets from the Ray object store with `model.load_weights`."""

    init_info_cls = ObjectStoreInitInfo
    update_info_cls = ObjectStoreUpdateInfo

    def init_transfer_engine(self, init_info: ObjectStoreInitInfo) -> None:
        """Nothing to connect (vLLM's lifecycle calls it once)."""

    def start_weight_update(self) -> None:
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: ObjectStoreUpdateInfo) -> None:
        bucket: PackedBucket = ray.get(update_info.bucket)
        with torch.no_grad():
            self.model.load_weights(bucket.tensors())

    def finish_weight_update(self) -> None:
        finalize_layerwise_reload(self.model, self.model_config)
        refresh_tied_head(self.model, self.model_config)

    def shutdown(self) -> None:
        """Nothing to release: the backend holds no connection."""


def refresh_tied_head(model: torch.nn.Module, model_config) -> bool:
    """Rebuild a tied `lm_head`'s processed weights (CPU: its packed GEMM) from the embedding it
    shares; True if there was one to refresh."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if not getattr(model_config.hf_config, "tie_word_embeddings", False) or method is None:
        return False
    method.process_weights_after_loading(head)
    return True


def register_cpu_backend() -> None:
    """Register the backend in this process (idempotent)."""
    try:
        WeightTransferEngineFactory.register_engine(CPU_WEIGHT_TRANSFER_BACKEND, ObjectStoreWeightTransferEngine)
    except ValueError as err:
        if "already registered" not in str(err):
            raise
