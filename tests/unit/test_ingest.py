"""How a PyTorch worker reads its shard: the auto choice and the in-memory batches (pure logic)."""

from __future__ import annotations

import pytest
import torch
from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec
from raylane.train import ingest
from raylane.train.loop_config import WorkerLoopConfig

CPU = torch.device("cpu")


def loop(ingest: str = "auto", train_rows: int = 0, val_rows: int = 0,
         ingest_memory_fraction: float = 0.25) -> WorkerLoopConfig:
    return WorkerLoopConfig(
        spec=ModelSpec(TORCH_MLP, "torch", InputSpec(64), OutputSpec("classification", 10)),
        task="classification", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=1, seed=0,
        cpus_per_worker=1, precision="fp32", strategy="ddp", ingest=ingest,
        ingest_memory_fraction=ingest_memory_fraction, train_rows=train_rows, val_rows=val_rows)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_an_explicit_mode_is_kept(mode) -> None:
    chosen, why = ingest.choose(loop(mode, train_rows=10**12), CPU, 1, 1, row_bytes=264)
    assert chosen == mode and f"train.ingest={mode}" in why


def test_auto_reads_a_small_shard_into_memory_and_streams_one_too_large() -> None:
    small = loop("auto", train_rows=140_000, val_rows=30_000, ingest_memory_fraction=0.25)
    mode, why = ingest.choose(small, CPU, local_workers=2, world_size=2, row_bytes=264)
    assert mode == "memory" and "MiB" in why
    huge = loop("auto", train_rows=10**13, val_rows=30_000, ingest_memory_fraction=0.25)
    mode, why = ingest.choose(huge, CPU, local_workers=2, world_size=2, row_bytes=264)
    assert mode == "stream" and "budget" in why
    assert ingest.choose(loop("auto"), CPU, 1, 1, row_bytes=264)[0] == "stream"  # size unknown


def test_in_memory_batches_cover_every_row_once_in_a_new_order_each_epoch() -> None:
    shard = ingest.InMemoryShard(torch.arange(10.0).unsqueeze(1).repeat(1, 3), torch.arange(10))
    epoch0 = list(shard.batches(4, seed=0))
    assert [len(y) for _, y in epoch0] == [4, 4, 2]
    rows = torch.cat([y for _, y in epoch0])
    assert sorted(rows.tolist()) == list(range(10))
    assert all(torch.equal(x[:, 0].long(), y) for x, y in epoch0), "features and labels stay paired"
    again = torch.cat([y for _, y in shard.batches(4, seed=0)])
    other = torch.cat([y for _, y in shard.batches(4, seed=1)])
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    assert torch.cat([y for _, y in shard.batches(4)]).tolist() == list(range(10))  # no seed: in order
    shard.truncate(7)
    assert len(shard) == 7 and shard.features.shape == (7, 3)
