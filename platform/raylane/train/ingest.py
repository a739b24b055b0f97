"""How a PyTorch worker reads its data: in memory on its device, or streamed by Ray Data.

Streaming (`iter_torch_batches`) pays Ray Data's per-batch costs every epoch: formatting Arrow
blocks into numpy, collating, copying to the device, and a local shuffle buffer. A worker whose
shard fits in its device's memory reads it once instead, into two tensors on the device, and
then each epoch shuffles them with one permutation and slices batches: the loop a PyTorch user
writes by hand when the data is already in memory.

    `train.ingest: memory`  always read the shard once (fails like PyTorch if it does not fit)
    `train.ingest: stream`  Ray Data every epoch, any size
    `train.ingest: auto`    memory when the shard fits in `train.ingest_memory_fraction` of the
                            free host memory, shared by the workers of a node (and on a GPU
                            worker also of its GPU's free memory), on every rank; else stream
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from raylane.train.loop_config import WorkerLoopConfig

Batch = tuple[torch.Tensor, torch.Tensor]  # (features, labels)


def choose(cfg: WorkerLoopConfig, device: torch.device, local_workers: int, world_size: int,
           row_bytes: int) -> tuple[str, str]:
    """Returns ("memory" | "stream", why) for this worker. Under `auto` every rank must then agree
    (`agree`): DDP's collectives and Ray Data's split need all ranks on the same path."""
    mode = cfg.ingest
    if mode != "auto":
        return mode, f"train.ingest={mode}"
    rows = math.ceil(cfg.train_rows / max(world_size, 1)) + cfg.val_rows
    need = rows * row_bytes
    if not rows:
        return "stream", "train.ingest=auto: the shard's size is unknown"
    fraction = cfg.ingest_memory_fraction
    # Host memory, shared by the node's workers: reading holds the blocks and their concatenation
    # (and on a GPU worker the pinned copy) at once.
    host_free = _host_free()
    host_budget = host_free * fraction / max(local_workers, 1)
    host_need = need * (3 if device.type == "cuda" else 2)
    why = (f"train.ingest=auto: the shard takes {need / 2**20:,.0f} MiB; host budget "
           f"{host_budget / 2**20:,.0f} MiB of {host_free / 2**30:.1f} GiB free")
    fits = host_need <= host_budget
    if device.type == "cuda":  # each GPU worker has its own device
        gpu_free = torch.cuda.mem_get_info(device)[0]
        fits = fits and need <= gpu_free * fraction
        why += f", GPU budget {gpu_free * fraction / 2**20:,.0f} MiB of {gpu_free / 2**30:.1f} GiB free"
    return ("memory" if fits else "stream"), why


def agree(mode: str, world_size: int, device: torch.device) -> str:
    """"memory" only when every rank chose it (one all-reduce); each rank measures its own memory."""
    if world_size < 2:
        return mode
    import torch.distributed as dist

    fits = torch.tensor([1 if mode == "memory" else 0], device=device)
    dist.all_reduce(fits, op=dist.ReduceOp.MIN)
    return "memory" if int(fits.item()) else "stream"


def _host_free() -> int:
    import psutil

    return psutil.virtual_memory().available


class InMemoryShard:
    """A dataset read once into a features tensor and a labels tensor on one device."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    @classmethod
    def read(cls, dataset: Any, device: torch.device) -> InMemoryShard:
        """Reads every row of a Ray Data shard (its Arrow blocks as they come, no re-batching)."""
        features, labels = [], []
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4):
            feature = batch["features"]
            if feature.dtype == object:  # ragged tensor blocks come back as arrays of arrays
                feature = np.stack(feature)
            features.append(torch.from_numpy(np.ascontiguousarray(feature, dtype=np.float32)))
            labels.append(torch.from_numpy(np.ascontiguousarray(batch["label"])))
        x = torch.cat(features) if features else torch.empty(0)
        y = torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return cls(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    def __len__(self) -> int:
        return len(self.labels)

    def truncate(self, rows: int) -> None:
        """Keeps the first `rows` rows: DDP needs the same number of batches on every worker."""
        self.features, self.labels = self.features[:rows], self.labels[:rows]

    def batches(self, batch_size: int, seed: int | None = None) -> Iterator[Batch]:
        """Every row once, in batches; shuffled by `seed` (a new order each epoch), else in order."""
        x, y = self.features, self.labels
        if seed is not None:
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
            x, y = x[order], y[order]
        for start in range(0, len(y), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]


def streamed(dataset: Any, batch_size: int, device: torch.device, seed: int | None = None
             ) -> Iterator[Batch]:
    """Ray Data's iterator, with a local shuffle buffer when `seed` is given."""
    shuffle = {} if seed is None else {"local_shuffle_buffer_size": 4 * batch_size,
                                       "local_shuffle_seed": seed}
    for batch in dataset.iter_torch_batches(batch_size=batch_size, device=device, **shuffle):
        yield batch["features"], batch["label"]


def equal_rows(shard: InMemoryShard, world_size: int) -> None:
    """Cuts every worker's shard to the smallest one's length, so DDP's collectives line up."""
    if world_size < 2:
        return
    import torch.distributed as dist

    rows = torch.tensor([len(shard)], device=shard.labels.device)
    dist.all_reduce(rows, op=dist.ReduceOp.MIN)
    shard.truncate(int(rows.item()))
