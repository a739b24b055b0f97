"""raylane.train.fsdp on two real gloo processes, without Ray: the network is sharded, its
checkpoint is the plain full state, and a restore puts the same shards and optimizer state back."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from torch import nn

from tests.conftest import free_port


class Scaled(nn.Module):
    """Parameters at two depths and uneven sizes: a parameter of its own around a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.body = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.LayerNorm(5), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


class Tied(nn.Module):
    """An output layer that shares its weight with an embedding (tied weights), one level down."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.encoder = nn.Linear(7, 5)
        self.classes = nn.Embedding(3, 5)
        self.decoder = nn.Sequential(nn.LayerNorm(5), nn.Linear(5, 3))
        self.decoder[1].weight = self.classes.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x) + self.classes(x[:, :3].argmax(dim=1))
        return self.decoder(hidden) * self.scale


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(torch.distributed.get_rank())  # a different batch per rank
    for _ in range(steps):
        optimizer.zero_grad()
        features = torch.randn(8, 7, generator=generator)
        nn.functional.cross_entropy(model(features), torch.arange(8) % 3).backward()
        optimizer.step()


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def round_trip(rank: int, port: int, directory: str, builder: str) -> None:
    from raylane.model.checkpoint import load_torch_model
    from raylane.model.network import InputSpec, ModelSpec, OutputSpec
    from raylane.train import fsdp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A collective only one rank reaches fails after a minute instead of hanging the suite.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    spec = ModelSpec(f"tests.unit.test_fsdp:{builder}", "torch", InputSpec(7),
                     OutputSpec("classification", 3))
    torch.manual_seed(0)
    model = fsdp.shard(spec.build())
    assert fsdp.local_parameters(model) < sum(p.numel() for p in spec.build().parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    train_steps(model, optimizer, 2)
    fsdp.save_full_state(directory, model, optimizer, 1, spec)  # every rank; rank 0 writes
    torch.distributed.barrier()

    trained = {name: full(tensor) for name, tensor in model.state_dict().items()}  # a collective
    if rank == 0:  # the checkpoint is a plain network's state, loaded strictly
        plain, _, epoch = load_torch_model(directory)
        assert epoch == 1 and isinstance(plain, type(spec.build()))
        assert list(plain.state_dict()) == list(trained)
        for name, tensor in trained.items():
            assert torch.equal(plain.state_dict()[name], tensor), name

    torch.manual_seed(1)  # a different start, so the restore has to do the work
    restored = fsdp.shard(spec.build())
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=0.01)
    assert fsdp.restore_full_state(directory, restored, restored_optimizer) == 1
    train_steps(model, optimizer, 1)  # one more step on both: the same parameters after it
    train_steps(restored, restored_optimizer, 1)
    assert len(list(restored.parameters())) == len(list(spec.build().parameters()))  # still tied
    for (name, a), b in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.allclose(full(a), full(b)), name
    torch.distributed.destroy_process_group()


def build(inputs, outputs) -> nn.Module:  # the spec's builders: the same networks, unsharded
    return Scaled()


def build_tied(inputs, outputs) -> nn.Module:
    return Tied()


def spawn_round_trip(tmp_path, builder: str) -> None:
    """Two ranks on a free port; once more on another port if a rank was killed by a signal (gloo
    aborts the process when another process took the port between free_port() and its bind; the
    full suite's Ray workers open ports all the time). A failure of the code itself repeats."""
    import torch.multiprocessing as mp

    for attempt in (1, 2):
        try:
            mp.spawn(round_trip, args=(free_port(), str(tmp_path), builder), nprocs=2)
            return
        except mp.ProcessExitedException:
            if attempt == 2:
                raise


def test_sharded_state_checkpoints_whole_and_restores_into_the_shards(tmp_path) -> None:
    spawn_round_trip(tmp_path, "build")


def test_tied_weights_shard_in_one_unit_and_checkpoint_both_names(tmp_path) -> None:
    spawn_round_trip(tmp_path, "build_tied")


def test_modules_on_the_way_to_a_tied_parameter_are_not_units_but_their_common_ancestor_is() -> None:
    from raylane.train.fsdp import inner_units

    model = nn.Sequential(nn.Linear(2, 2), Tied())  # Tied owns a parameter: a unit of its own
    units = inner_units(model)
    assert model[1] in units and model[0] in units and model[1].encoder in units
    assert model[1].decoder[0] in units  # a sibling of the tied layer stays a unit
    assert model[1].classes not in units and model[1].decoder[1] not in units
    assert units.index(model[1].encoder) < units.index(model[1])  # innermost first
