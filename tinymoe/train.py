"""The training recipe on Keras fit: AdamW, cosine decay with warm-up, label smoothing."""

import dataclasses
import os

from tinymoe.backend import keras


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One recipe for every model.

    Args:
        epochs: passes over the training set.
        batch_size: images per step.
        learning_rate: peak learning rate, reached after the warm-up.
        warmup_epochs: linear warm-up from 0, in epochs (fractions allowed).
        min_learning_rate_ratio: the cosine ends at this share of the peak.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
        label_smoothing: label smoothing of the cross-entropy.

    Example:
        >>> fit(model, train, val, TrainConfig(epochs=30, learning_rate=2e-3), "runs/x")
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_epochs: float = 2.0
    min_learning_rate_ratio: float = 0.01
    weight_decay: float = 0.05
    label_smoothing: float = 0.1


def learning_rate_schedule(config, steps_per_epoch):
    """Linear warm-up to ``config.learning_rate``, then cosine decay over the remaining steps.

    Example:
        >>> schedule = learning_rate_schedule(TrainConfig(epochs=10), steps_per_epoch=100)
        >>> float(schedule(0))
        0.0
    """
    total = max(1, int(config.epochs * steps_per_epoch))
    warmup = min(total - 1, int(round(config.warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(1, total - warmup), alpha=config.min_learning_rate_ratio,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def compile_for_training(model, config, steps_per_epoch, run_eagerly=False):
    """Compiles ``model`` with the recipe: AdamW, the schedule, smoothed cross-entropy.

    Labels are one-hot (as :func:`tinymoe.augment.make_dataset` yields them); the model
    returns logits. A mixture of experts adds its load-balancing loss itself.

    Example:
        >>> compile_for_training(model, TrainConfig(), steps_per_epoch=111)
        >>> model.fit(train, epochs=30)
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(config, steps_per_epoch),
        weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "norm"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        run_eagerly=run_eagerly)
    return model


def training_callbacks(out_dir, monitor="val_accuracy"):
    """Callbacks for any ``model.fit``: best checkpoint (``best.keras``) and a CSV log.

    Args:
        out_dir: folder for ``best.keras`` and ``log.csv`` (created if missing).
        monitor: the metric that decides which epoch is best (maximised).

    Example:
        >>> model.fit(train, validation_data=val, epochs=10,
        ...           callbacks=training_callbacks("runs/dense"))
    """
    os.makedirs(out_dir, exist_ok=True)
    return [
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "best.keras"), monitor=monitor,
                                        mode="max", save_best_only=True, verbose=0),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "log.csv")),
    ]


def fit(model, train_data, val_data, config, out_dir=None, verbose=1, run_eagerly=False,
        callbacks=()):
    """Compiles ``model`` with the recipe and trains it with Keras fit.

    Args:
        model: a Keras model returning logits.
        train_data: a batched ``tf.data.Dataset`` of (images, one-hot labels).
        val_data: the same for validation, or None.
        config: a :class:`TrainConfig`.
        out_dir: folder for the best checkpoint and the CSV log; None saves nothing.
        verbose: Keras progress bars (1), one line per epoch (2) or silence (0).
        run_eagerly: skip graph tracing (faster for one or two tiny steps, slower after).
        callbacks: more Keras callbacks (e.g. :func:`tinymoe.optimize.pruning_callbacks`).

    Returns:
        the Keras ``History``.

    Example:
        >>> history = fit(model, train, val, TrainConfig(epochs=10), out_dir="runs/dense")
    """
    steps = train_data.cardinality().numpy()
    if steps <= 0:
        raise ValueError("The training dataset is empty or of unknown length.")
    compile_for_training(model, config, int(steps), run_eagerly)
    callbacks = list(callbacks)
    if out_dir is not None:
        monitor = "val_accuracy" if val_data is not None else "accuracy"
        callbacks += training_callbacks(out_dir, monitor)
    return model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                     callbacks=callbacks, verbose=verbose)

