"""The PyTorch worker loop on real Ray Train: DDP workers learn, checkpoint, and resume."""

from __future__ import annotations

import pytest
from raylane import data
from raylane.config import load_config
from raylane.model.checkpoint import load_torch_model as load_model
from raylane.train.trainer import build_trainer


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    cfg = load_config(None, [])
    return data.prepare(cfg.data, str(tmp_path_factory.mktemp("storage")))


def test_second_fit_resumes_from_the_last_checkpoint_not_epoch_zero(prepared, tmp_path) -> None:
    storage = str(tmp_path)
    # One worker: resuming is the same for any number of them (the fault tests kill a DDP worker).
    one = ["train.num_workers=1"]
    first = build_trainer(load_config(None, ["train.epochs=2", *one]), {"lr": 0.01}, prepared,
                          name="resume", storage_path=storage).fit()
    assert first.metrics["epoch"] == 1 and first.metrics["start_epoch"] == 0
    with first.checkpoint.as_directory() as directory:
        _, spec, epoch = load_model(directory)
    assert epoch == 1 and spec.inputs.features == 64 and spec.outputs.size == 10

    # The same run name and storage: Ray Train hands the loop its last checkpoint.
    second = build_trainer(load_config(None, ["train.epochs=4", *one]), {"lr": 0.01}, prepared,
                           name="resume", storage_path=storage).fit()
    assert second.metrics["start_epoch"] == 2, "the loop started over instead of resuming"
    assert second.metrics["epoch"] == 3
    assert second.metrics["val_accuracy"] > 0.8  # 10 classes: chance is 0.1


@pytest.mark.parametrize(("ingest", "precision"), [("stream", "fp32"), ("auto", "bf16")])
def test_both_ingest_paths_learn_with_two_ddp_workers(prepared, tmp_path, ingest, precision) -> None:
    """stream: Ray Data's iter_torch_batches every epoch; auto: the ranks agree on memory for a
    shard this small (each reads its shard once into tensors; DDP needs equal shards). The second
    also trains under bf16 autocast, which learns as well."""
    cfg = load_config(None, ["train.epochs=2", "train.num_workers=2", f"train.ingest={ingest}",
                             f"train.precision={precision}"])
    result = build_trainer(cfg, {"lr": 0.01}, prepared, name=f"ingest-{ingest}",
                           storage_path=str(tmp_path)).fit()
    assert result.error is None
    assert result.metrics["val_accuracy"] > 0.8
    train_rows = prepared.num_rows["train"]
    assert train_rows - 2 <= result.metrics["train_rows"] <= train_rows  # every row, less DDP's equalising


def test_fsdp_workers_learn_checkpoint_the_plain_full_model_and_resume_into_shards(prepared,
                                                                                   tmp_path) -> None:
    """train.strategy fsdp: each of 2 workers holds half of every layer and of its optimizer state.
    The checkpoint holds the whole network, as a plain `spec.build()` network's state_dict (what
    the logged model loads), and the whole optimizer state; a second fit loads it back into the
    shards and goes on, under bf16 autocast."""
    import numpy as np
    import torch
    from raylane.model.checkpoint import TORCH_STATE_FILE

    storage, fsdp = str(tmp_path), ["train.num_workers=2", "train.strategy=fsdp"]
    first = build_trainer(load_config(None, ["train.epochs=2", *fsdp]), {"lr": 0.01}, prepared,
                          name="fsdp", storage_path=storage).fit()
    assert first.error is None
    assert first.metrics["val_accuracy"] > 0.8  # 10 classes: chance is 0.1
    with first.checkpoint.as_directory() as directory:
        network, spec, epoch = load_model(directory)  # a plain spec.build() network, strict load
        state = torch.load(f"{directory}/{TORCH_STATE_FILE}", map_location="cpu")
    assert epoch == 1
    whole = network.state_dict()
    total = sum(p.numel() for p in network.parameters())
    assert first.metrics["parameters_on_worker"] <= total / 2 + 64  # rank 0's shards: about half
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in whole.items()}
    assert set(state["optimizer"]["state"]) == set(whole)  # every parameter's Adam moments, whole
    for name, moments in state["optimizer"]["state"].items():
        assert moments["exp_avg"].shape == whole[name].shape, name

    batch = prepared.val.take_batch(prepared.val.count(), batch_format="numpy")
    with torch.no_grad():
        predicted = network(torch.from_numpy(np.stack(batch["features"]).astype(np.float32))).argmax(1)
    accuracy = float((predicted.numpy() == batch["label"]).mean())
    assert accuracy == pytest.approx(first.metrics["val_accuracy"], abs=0.01)  # the trained weights

    second = build_trainer(load_config(None, ["train.epochs=4", "train.precision=bf16", *fsdp]),
                           {"lr": 0.01}, prepared, name="fsdp", storage_path=storage).fit()
    assert second.error is None
    assert second.metrics["start_epoch"] == 2, "the loop started over instead of resuming"
    assert second.metrics["epoch"] == 3
    assert second.metrics["val_accuracy"] > 0.85
