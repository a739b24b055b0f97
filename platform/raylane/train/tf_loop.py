"""What one TensorFlow worker does: join the MultiWorkerMirroredStrategy, resume, then per epoch
train on its shard with a custom synchronous step, evaluate, report.

Why a custom step and not `model.fit`: Keras 3 `fit` under MultiWorkerMirroredStrategy with more
than one worker is broken in several releases (keras-team/keras#20585). `strategy.run` around a
GradientTape step works with TensorFlow 2.21 / Keras 3.15: Keras' TensorFlow optimizer all-reduces
(sums) the gradients of every replica in `apply_gradients`, so the loss is scaled by the global
batch. Ray Train sets TF_CONFIG for every worker before this function starts. Only Keras 3
objects are used (no tf_keras).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import ray.train

from raylane.train import rungs
from raylane.train.model import ModelSpec
from raylane.train.weights import (
    TF_STATE_FILE,
    build_keras_mlp,
    history_entry,
    load_keras_model,
    read_history,
    write_history,
    write_spec,
)

load_model = load_keras_model  # (model, spec, epoch) from a checkpoint directory


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    # One op thread per reserved CPU: more only contends with the other workers on the node.
    tf.config.threading.set_intra_op_parallelism_threads(max(1, int(config["cpus_per_worker"])))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG, set by Ray
    spec = ModelSpec(**config["spec"])
    keras.utils.set_random_seed(config["seed"])
    with strategy.scope():  # variables become mirrored; initial values come from worker 0
        model = build_keras_mlp(spec)
        optimizer = keras.optimizers.Adam(
            learning_rate=config["lr"], weight_decay=config["weight_decay"] or None
        )
        optimizer.build(model.trainable_variables)

    start_epoch, history = 0, []  # history: every epoch's metrics so far, kept in the checkpoints
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group, or a resumed trial: continue, never start over
        with checkpoint.as_directory() as directory:
            start_epoch = restore_state(directory, model, optimizer) + 1
            history = read_history(directory)

    batch_size = config["batch_size"]
    global_batch = batch_size * strategy.num_replicas_in_sync
    regression = config.get("task") == "regression"
    mean, std = config.get("target_mean", 0.0), config.get("target_std", 1.0)

    def per_row_loss(y: Any, outputs: Any) -> Any:
        """Cross-entropy, or for regression the squared error of the standardized label."""
        if regression:
            return tf.square(outputs[:, 0] - (tf.cast(y, tf.float32) - mean) / std)
        return keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=True)

    @tf.function
    def train_step(features: Any, labels: Any) -> Any:
        def replica_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_sum(per_row_loss(y, logits)) / global_batch
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))  # all-reduced
            return loss

        per_replica = strategy.run(replica_step, args=(features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def weight_spread() -> Any:
        """Max minus min over workers of a weight checksum: 0 when the replicas are in sync."""
        def checksum() -> Any:
            return tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in model.trainable_variables])

        every = strategy.gather(strategy.run(lambda: tf.reshape(checksum(), [1])), axis=0)
        return tf.reduce_max(every) - tf.reduce_min(every)

    train_shard = ray.train.get_dataset_shard("train")  # this worker's part of train
    val_data = ray.train.get_dataset_shard("val")  # all of val, on every worker

    world_size = ray.train.get_context().get_world_size()
    for epoch in range(start_epoch, config["epochs"]):
        total_loss, steps, started = 0.0, 0, time.perf_counter()
        # drop_last keeps shapes static and the step count equal on every worker (a collective
        # per step: one worker with an extra batch would wait forever).
        for batch in train_shard.iter_tf_batches(
            batch_size=batch_size, drop_last=True,
            local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=config["seed"] + epoch,
        ):
            total_loss += float(train_step(batch["features"], batch["label"]))
            steps += 1

        epoch_time = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(steps, 1),
            **evaluate(model, val_data, per_row_loss, (mean, std) if regression else None),
            "start_epoch": start_epoch,
            "num_replicas_in_sync": strategy.num_replicas_in_sync,
            "replica_weight_spread": float(weight_spread()),
            "train_rows": steps * batch_size * world_size,  # rows seen by all workers this epoch
            "epoch_time_s": epoch_time,
        }
        if epoch == start_epoch and start_epoch > 0:
            # Epochs before the checkpoint whose reports may have died with a killed driver.
            metrics["history"] = json.dumps(history)
        history.append(history_entry(metrics))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                save_state(directory, model, optimizer, epoch, spec)
                write_history(directory, history)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)  # a barrier: every rank reports
        if not rungs.go_on(config, epoch):  # asha_promotion: paused at this rung, the fit ends here
            return


def evaluate(model: Any, dataset: Any, per_row_loss: Any, target: tuple[float, float] | None
             ) -> dict[str, float]:
    """Returns {val_loss, val_accuracy} of `model` over every row of `dataset`; for regression
    (`target`: the label's mean and std) {val_loss, val_mae}, the error in the label's own units."""
    import tensorflow as tf

    loss_sum, score, rows = 0.0, 0.0, 0
    for batch in dataset.iter_tf_batches(batch_size=512):
        outputs = model(batch["features"], training=False)
        labels = batch["label"]
        loss_sum += float(tf.reduce_sum(per_row_loss(labels, outputs)))
        if target is None:
            score += int(tf.reduce_sum(tf.cast(tf.argmax(outputs, axis=1) == labels, tf.int32)))
        else:
            values = outputs[:, 0] * target[1] + target[0]
            score += float(tf.reduce_sum(tf.abs(values - tf.cast(labels, tf.float32))))
        rows += int(labels.shape[0])
    name = "val_accuracy" if target is None else "val_mae"
    return {"val_loss": loss_sum / max(rows, 1), name: score / max(rows, 1)}


def save_state(directory: str, model: Any, optimizer: Any, epoch: int, spec: ModelSpec) -> None:
    """Writes weights, optimizer variables, the epoch and the spec into `directory`."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    np.savez(os.path.join(directory, TF_STATE_FILE), epoch=np.array(epoch), **arrays)
    write_spec(directory, spec)


def restore_state(directory: str, model: Any, optimizer: Any) -> int:
    """Loads weights and optimizer variables from `directory`; returns the checkpoint's epoch."""
    with np.load(os.path.join(directory, TF_STATE_FILE)) as state:
        model.set_weights([state[f"w{i}"] for i in range(len(model.get_weights()))])
        for i, variable in enumerate(optimizer.variables):
            variable.assign(state[f"o{i}"])
        return int(state["epoch"])
