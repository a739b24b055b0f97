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

from typing import Any

import ray.train

from raylane.model.checkpoint import restore_keras_state, save_keras_state
from raylane.train import metrics, steps
from raylane.train.loop_config import WorkerLoopConfig
from raylane.train.report import EpochReport


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    cfg = WorkerLoopConfig.from_dict(config)
    steps.worker_logging()
    # One op thread per reserved CPU: more only contends with the other workers on the node.
    tf.config.threading.set_intra_op_parallelism_threads(max(1, int(cfg.cpus_per_worker)))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG, set by Ray
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():  # variables become mirrored; initial values come from worker 0
        model = cfg.spec.build()  # the configured model builder (model.builder)
        optimizer = keras.optimizers.Adam(learning_rate=cfg.lr, weight_decay=cfg.weight_decay or None)
        optimizer.build(model.trainable_variables)

    # A restarted worker group or a resumed trial continues from its checkpoint, never starts over.
    # history: every epoch's metrics so far, kept in the checkpoints.
    start_epoch, history = steps.resume(lambda path: restore_keras_state(path, model, optimizer))

    batch_size = cfg.batch_size
    global_batch = batch_size * strategy.num_replicas_in_sync
    task = cfg.objective
    regression = task.loss == "mse"
    mean, std = cfg.target_mean, cfg.target_std

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
                if model.losses:  # the builder's regularizers, summed over replicas like the loss
                    loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
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

    def as_input(features: Any) -> Any:  # images: [batch, H, W, C]
        return tf.reshape(features, (-1, *cfg.spec.inputs.shape("tensorflow")))

    def save(directory: str, epoch: int) -> None:
        save_keras_state(directory, model, optimizer, epoch, cfg.spec)

    world_size = ray.train.get_context().get_world_size()
    # Prometheus, through Ray's metrics agent (`raylane.train.metrics`). The all-reduce runs inside
    # the compiled step and is not timed apart from it.
    watch = metrics.for_worker(cfg, gpu=metrics.tf_gpu())
    for epoch in range(start_epoch, cfg.epochs):
        clock = steps.EpochClock()
        watch.start_epoch(epoch)
        total_loss, batches = 0.0, 0
        # drop_last keeps shapes static and the step count equal on every worker (a collective
        # per step: one worker with an extra batch would wait forever).
        for batch in watch.batches(train_shard.iter_tf_batches(
            batch_size=batch_size, drop_last=True,
            local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=cfg.seed + epoch,
        )):
            total_loss += float(train_step(as_input(batch["features"]), batch["label"]))
            batches += 1
            watch.step(batch_size)

        epoch_time = clock.wall_s()
        val_loss, val_score = evaluate(lambda x: model(as_input(x), training=False), val_data, per_row_loss,
                                       (mean, std) if regression else None)
        report = EpochReport(
            epoch=epoch, train_loss=total_loss / max(batches, 1), val_loss=val_loss,
            val_metric=task.val_metric, val_score=val_score, start_epoch=start_epoch,
            train_rows=batches * batch_size * world_size,  # rows seen by all workers this epoch
            epoch_time_s=epoch_time,
            extra={"num_replicas_in_sync": strategy.num_replicas_in_sync,
                   "replica_weight_spread": float(weight_spread())},
        )
        watch.end_epoch(report)
        if not steps.end_epoch(cfg, report, history, save, clock):
            return  # asha_promotion paused the trial at this rung: the fit ends here


def evaluate(network: Any, dataset: Any, per_row_loss: Any, target: tuple[float, float] | None
             ) -> tuple[float, float]:
    """Returns (loss, accuracy) of `network` (inference) over every row of `dataset`; for
    regression (`target`: the label's mean and std) (loss, mean absolute error), the error in the
    label's own units."""
    import tensorflow as tf

    loss_sum, score, rows = 0.0, 0.0, 0
    for batch in dataset.iter_tf_batches(batch_size=512):
        outputs = network(batch["features"])
        labels = batch["label"]
        loss_sum += float(tf.reduce_sum(per_row_loss(labels, outputs)))
        if target is None:
            score += int(tf.reduce_sum(tf.cast(tf.argmax(outputs, axis=1) == labels, tf.int32)))
        else:
            values = outputs[:, 0] * target[1] + target[0]
            score += float(tf.reduce_sum(tf.abs(values - tf.cast(labels, tf.float32))))
        rows += int(labels.shape[0])
    return loss_sum / max(rows, 1), score / max(rows, 1)
