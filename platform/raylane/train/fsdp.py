"""FSDP for the PyTorch workers (`train.strategy: fsdp`): shard the built network across the
workers, gather its full state into a checkpoint, and load a full checkpoint back into the shards.

    model = fsdp.shard(network)                          # each worker keeps 1/world of every layer
    fsdp.save_full_state(directory, model, optimizer, epoch, spec)   # every rank gathers, rank 0 writes
    epoch = fsdp.restore_full_state(directory, model, optimizer)     # every rank takes its shards

This is torch's `fully_shard` (FSDP2) rather than Ray's `prepare_model(parallel_strategy="fsdp")`:
Ray 2.60's refuses to wrap a model without CUDA, and FSDP2 runs on CPU over gloo as on GPU over
NCCL. The checkpoint holds the plain network's `state_dict()` (full tensors, no wrapper prefixes)
and the full optimizer state keyed by parameter name, so the logged model loads into a plain
`spec.build()` network like a DDP one, and any number of workers can resume from it.

Each function but `local_parameters` is a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raylane.model.checkpoint import read_torch_state, write_torch_state
from raylane.model.network import ModelSpec


def shard(network: nn.Module) -> nn.Module:
    """Returns `network` (already on its device) with its parameters sharded across the workers.

    Every submodule that owns parameters becomes an FSDP unit, all-gathered only for its own
    forward and backward and freed after, unless it owns or leads to a tied parameter
    (`inner_units`); the root takes whatever is left. Gradients are
    reduce-scattered to the shards, and an optimizer built on the returned model's parameters
    keeps state for the local shards only. Each rank keeps its shard of its own copy, so every
    rank must build the same initial network (the loop seeds torch before building it)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The workers' mesh on the network's device type: torch's default is CUDA whenever a GPU is
    # visible, even to a CPU worker.
    device = next(network.parameters(), torch.empty(0)).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for module in inner_units(network):
        fully_shard(module, mesh=mesh)
    return fully_shard(network, mesh=mesh)


def inner_units(network: nn.Module) -> list[nn.Module]:
    """Returns the submodules that `shard` makes FSDP units of their own, innermost first: each
    one that owns parameters, except those on the way from a tied parameter's owners up to their
    common ancestor, whose unit (or the root) then holds the tied parameter once.

    fully_shard refuses one Parameter in two units, as an embedding and an output layer sharing
    a weight would otherwise be."""
    owners: dict[int, list[list[str]]] = {}  # id(parameter) -> its owners' paths, name by name
    for name, parameter in network.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name.split(".")[:-1])
    kept_whole: set[nn.Module] = set()
    for paths in owners.values():
        if len(paths) > 1:
            ancestor = len(common_prefix(paths))
            for path in paths:
                kept_whole.update(network.get_submodule(".".join(path[:depth]))
                                  for depth in range(ancestor + 1, len(path) + 1))
    # Reversed pre-order: a module's descendants are sharded before it, so each unit owns only
    # the parameters no inner unit took.
    return [module for module in reversed(list(network.modules())[1:])
            if module not in kept_whole and next(module.parameters(recurse=False), None) is not None]


def common_prefix(paths: list[list[str]]) -> list[str]:
    """Returns the longest list of names that starts every one of `paths`."""
    prefix: list[str] = []
    for names in zip(*paths, strict=False):  # paths of different lengths
        if any(name != names[0] for name in names):
            break
        prefix.append(names[0])
    return prefix


def save_full_state(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    spec: ModelSpec) -> None:
    """Gathers the full model and optimizer state into rank 0's CPU memory and writes it there,
    in `save_torch_state`'s format; the other ranks send their shards and write nothing."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # cpu_offload with full_state_dict: only rank 0 receives the tensors (the others get {}), one
    # parameter at a time, so no worker ever holds the whole model on its device.
    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() == 0:
        write_torch_state(directory, model_state, optimizer_state, epoch, spec)


def restore_full_state(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Loads a checkpoint's full state into this rank's shards of the model and the optimizer;
    returns the checkpoint's epoch."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state: dict[str, Any] = read_torch_state(directory)  # every rank reads the full checkpoint
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
    return int(state["epoch"])


def local_parameters(model: nn.Module) -> int:
    """Returns how many parameter values this rank holds: its shards' sizes, not the full model's."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
