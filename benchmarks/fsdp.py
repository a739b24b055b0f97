"""Memory per worker of FSDP against DDP (`train.strategy`), and what it costs in throughput: two
Ray Train workers train the same ~50M-parameter MLP with Adam, same batch, same run.

    python -m benchmarks.fsdp [--features 512] [--hidden 4096] [--layers 4] [--batch 64] [--steps 5]
    python -m benchmarks.fsdp --gpu           # one GPU per worker, NCCL (where GPUs are lent)

Each side is one TorchTrainer fit of 2 workers (gloo on CPU) building the network the way
raylane's worker loop does: `ray.train.torch.prepare_model` (DDP), or `raylane.train.fsdp.shard`
(FSDP2, each worker keeps half of every layer). Each worker trains on synthetic rows held in
memory, then measures, per worker:

    params+optim   bytes of the parameters and the Adam moments this worker holds (the local
                   tensors' storage: under FSDP, its shards), measured after an optimizer step
    +grads         the same plus the gradients, still held at that point
    peak RSS       the worker process's peak resident memory (ru_maxrss; with --gpu, the peak
                   GPU memory allocated), and its growth since the training function started
                   (Ray's and torch's own ~0.5 GB are in the first figure, the same on both sides)
    samples/s      this worker's rows per second over the timed steps, after --warmup steps

DDP's gradient buckets (a second copy of the gradients for its all-reduce) are not in the
tensor sums but are in peak RSS. The ratios are FSDP / DDP; the target is params+optim <= 0.6x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

MB = 1024 * 1024
FIGURES = "workers.json"


def held_bytes(tensors: Any) -> int:
    """Bytes of the storage behind `tensors`, each storage once (DTensors: the local shard's)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def worker(config: dict[str, Any]) -> None:
    """One worker's fit: build, (shard,) train a few steps, measure, gather every rank's figures."""
    import resource

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec
    from raylane.train import fsdp

    rss_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)  # every rank builds the same network (FSDP keeps its shard of its own copy)
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(config["features"]), OutputSpec("classification", 10),
                     {"hidden_size": config["hidden"], "num_layers": config["layers"]})
    if config["strategy"] == "fsdp":
        model = fsdp.shard(ray.train.torch.prepare_model(spec.build(), parallel_strategy=None))
    else:
        model = ray.train.torch.prepare_model(spec.build())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    device = ray.train.torch.get_device()
    features = torch.randn(config["batch"], config["features"], device=device)
    labels = torch.randint(0, 10, (config["batch"],), device=device)

    for step in range(config["warmup"] + config["steps"]):
        if step == config["warmup"]:
            dist.barrier()
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()
    loss.item()  # waits for the device
    seconds = time.perf_counter() - started

    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    moments = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mine = {
        "params_optim": held_bytes(params) + held_bytes(moments),
        "params_grads_optim": held_bytes(params) + held_bytes(grads) + held_bytes(moments),
        "peak": peak, "peak_growth": peak - (0 if device.type == "cuda" else rss_at_start),
        "samples_per_s": config["batch"] * config["steps"] / seconds,
        "parameters": sum(p.numel() for p in params),  # a DTensor's numel is the full tensor's
    }
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    with tempfile.TemporaryDirectory() as directory:  # a fit's result has metrics only with a checkpoint
        checkpoint = None
        if dist.get_rank() == 0:
            with open(os.path.join(directory, FIGURES), "w") as f:
                json.dump(everyone, f)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({}, checkpoint=checkpoint)


def fit(strategy: str, args: argparse.Namespace, storage: str) -> list[dict[str, float]]:
    """Runs one side's fit; returns each worker's figures."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {"strategy": strategy, **{k: getattr(args, k) for k in
                                       ("features", "hidden", "layers", "batch", "steps", "warmup")}}
    trainer = TorchTrainer(
        worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
        run_config=RunConfig(name=f"fsdp-bench-{strategy}-{time.time_ns()}", storage_path=storage),
    )
    result = trainer.fit()
    if result.error:
        raise SystemExit(f"[bench] the {strategy} fit failed: {result.error}")
    with result.checkpoint.as_directory() as directory, open(os.path.join(directory, FIGURES)) as f:
        return json.load(f)


def table(sides: dict[str, list[dict[str, float]]], peak_name: str) -> str:
    """The per-worker figures as a markdown table."""
    lines = [f"| strategy | worker | params+optim MB | +grads MB | {peak_name} MB | growth MB | samples/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for strategy, workers in sides.items():
        for rank, w in enumerate(workers):
            lines.append(f"| {strategy} | {rank} | {w['params_optim'] / MB:,.0f} | "
                         f"{w['params_grads_optim'] / MB:,.0f} | {w['peak'] / MB:,.0f} | "
                         f"{w['peak_growth'] / MB:,.0f} | {w['samples_per_s']:,.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4, help="hidden layers of the MLP")
    parser.add_argument("--batch", type=int, default=64, help="rows per step on each worker")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed ones")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    args = parser.parse_args(argv)

    import ray

    # The workers' own lines stay in Ray's session logs: the table is the output.
    ray.init(address="local", num_cpus=args.workers + 2, logging_level="error", log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        sides = {strategy: fit(strategy, args, storage) for strategy in ("ddp", "fsdp")}
    ray.shutdown()

    parameters = int(sides["ddp"][0]["parameters"])
    peak_name = "peak GPU" if args.gpu else "peak RSS"
    print(f"[bench] MLP {args.features}-({args.hidden} x {args.layers})-10: {parameters / 1e6:.1f}M "
          f"parameters; Adam; {args.workers} workers ({'NCCL, GPU' if args.gpu else 'gloo, CPU'}); "
          f"batch {args.batch} per worker; {args.steps} timed steps")
    print(table(sides, peak_name))

    def ratio(key: str) -> float:  # the worst worker of each side
        return max(w[key] for w in sides["fsdp"]) / max(w[key] for w in sides["ddp"])

    def throughput() -> float:
        return sum(w["samples_per_s"] for w in sides["fsdp"]) / sum(w["samples_per_s"] for w in sides["ddp"])

    print(f"ratio_params_optim={ratio('params_optim'):.2f} (FSDP / DDP per worker; target <= 0.6)")
    print(f"ratio_params_grads_optim={ratio('params_grads_optim'):.2f}")
    print(f"ratio_peak={ratio('peak'):.2f} ratio_peak_growth={ratio('peak_growth'):.2f}")
    print(f"ratio_throughput={throughput():.2f} (FSDP / DDP samples/s)")
    print(json.dumps({"parameters": parameters, **{s: w for s, w in sides.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
