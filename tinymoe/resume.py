"""A stopped ``tinymoe train`` run goes on where it stopped, as if it had not stopped.

Keras' ``BackupAndRestore`` keeps the weights, the optimizer (its step, so the learning-rate
schedule too) and the last finished epoch in a checkpoint after every epoch. What it leaves
out, and a seeded run needs to give the model an unbroken run gives, is restored here:

- the training data's order and augmentation: each epoch's shuffle is drawn when Keras
  creates that epoch's iterator, so a resumed run creates (without reading them) one
  iterator per epoch already trained, and its next epoch sees the batches the unbroken run's
  did (tinymoe's crop and flip draws belong to each iterator too);
- the dropout masks: Keras draws them with stateful random ops whose state no checkpoint
  holds. The model's dropout layers draw from a ``tf.random.Generator`` instead, kept in
  the checkpoint, and so is TensorFlow's global generator, which keras-cv's RandAugment,
  MixUp and CutMix draw from (their draws differ between two unbroken runs with one seed
  already, so a run with ``--augment strong`` resumes with its state, not bit for bit);
- the run's files: ``log.csv`` keeps the lines of the epochs the backup holds and goes on
  from them; ``best.keras`` is replaced only by an epoch better than the best logged.
"""

import csv
import os

from tinymoe.backend import keras, tf
from tinymoe.files import atomic_path

TRAIN_BACKUP = "train_backup"  # train_run's per-epoch checkpoint folder, inside its out_dir
_EPOCH_KEY = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"  # Keras' last finished epoch


def finished_epochs(backup_dir, config=None):
    """How many epochs the run backed up in ``backup_dir`` had finished (0: no backup).

    With ``config`` (a :class:`tinymoe.train.TrainConfig`), refuses a backup that a run with
    that config cannot go on from (its epochs lie outside ``config``'s).

    Example:
        >>> finished_epochs("runs/dense/train_backup")  # stopped during epoch 26
        25
    """
    path = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))  # Keras' layout
    if path is None:
        return 0
    reader = tf.train.load_checkpoint(path)
    if not reader.has_tensor(_EPOCH_KEY):
        raise ValueError(f"{backup_dir!r} holds a checkpoint without the epoch Keras' "
                         f"BackupAndRestore writes; remove it to train from the start.")
    finished = int(reader.get_tensor(_EPOCH_KEY)) + 1
    if config is not None and not config.initial_epoch < finished < config.epochs:
        raise ValueError(f"{backup_dir!r} is the backup of a run stopped after epoch "
                         f"{finished}, which this run (epochs {config.initial_epoch + 1} to "
                         f"{config.epochs}) cannot go on from: give the stopped run's "
                         f"arguments, or another output folder.")
    return finished


def resumable_callbacks(out_dir, monitor, config, backup_dir, train_data):
    """:func:`tinymoe.train.training_callbacks` (``best.keras``, ``log.csv``,
    ``epoch<N>.keras`` in ``out_dir``) set to go on after the epochs backed up in
    ``backup_dir`` (:func:`continue_logs`), and last a :class:`TrainingBackup`, so that an
    epoch is backed up once its log line and checkpoints are written.

    Example:
        >>> callbacks = resumable_callbacks("runs/dense", "val_accuracy", config,
        ...                                 "runs/dense/train_backup", train)
        >>> fit(model, train, val, dataclasses.replace(config, save_epochs=()),
        ...     callbacks=callbacks)
    """
    from tinymoe.train import training_callbacks

    callbacks = training_callbacks(out_dir, monitor, config.save_epochs)
    finished = finished_epochs(backup_dir, config)
    if finished:
        continue_logs(callbacks, finished, monitor)
    return [*callbacks, TrainingBackup(backup_dir, train_data, config.initial_epoch)]


def continue_logs(callbacks, epochs, monitor):
    """Sets the CSV logger and best checkpoint of ``callbacks`` (from
    :func:`tinymoe.train.training_callbacks`) to go on after ``epochs`` finished epochs.

    ``log.csv`` keeps its lines of epochs 1 to ``epochs`` (a line written after the last
    backup is dropped: that epoch trains again) and is appended to; ``best.keras`` is replaced
    only by an epoch whose ``monitor`` beats the best of those lines.

    Example:
        >>> callbacks = training_callbacks("runs/dense")
        >>> continue_logs(callbacks, finished_epochs("runs/dense/train_backup"), "val_accuracy")
    """
    rows = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.CSVLogger):
            rows = _logged_rows(callback.filename, epochs)
            callback.append = True
    scores = [float(row[monitor]) for row in rows if row.get(monitor)]
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.ModelCheckpoint) and scores:
            callback.best = max(scores)


def _logged_rows(path, epochs):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, [row for row in reader
                                           if int(row["epoch"]) < epochs]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)  # as Keras' CSVLogger writes it
        writer.writeheader()
        writer.writerows(rows)
    return rows


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (after every epoch, into ``backup_dir``) that also restores the
    data order, the dropout masks and the global random generator (see the module's
    docstring). Put it after the callbacks that write the epoch's files, so that a backed-up
    epoch has its log line and checkpoints. On success the backup folder is removed.

    Args:
        backup_dir: the folder (all workers of a multi-worker run pass the same one; only
            the chief keeps files there).
        train_data: the ``tf.data.Dataset`` fit trains on (its shuffle is drawn again for
            each epoch the backup holds).
        initial_epoch: the epoch fit starts from when there is no backup.

    Example:
        >>> backup = TrainingBackup("runs/dense/train_backup", train)
        >>> model.fit(train, epochs=30, callbacks=[*training_callbacks("runs/dense"), backup])
    """

    def __init__(self, backup_dir, train_data, initial_epoch=0):
        super().__init__(backup_dir)
        self.train_data, self.initial_epoch = train_data, int(initial_epoch)

    def on_train_begin(self, logs=None):
        generators = _dropout_generators(self.model)
        try:
            generators.append(tf.random.get_global_generator())
        except RuntimeError:  # op determinism on and no global generator set: none drawn
            pass
        # Tracked by the model, so in the checkpoint Keras writes and restores.
        self.model._resume_generators = generators
        super().on_train_begin(logs)
        finished = finished_epochs(self.backup_dir)
        for _ in range(max(0, finished - self.initial_epoch)):
            iter(self.train_data)  # draws that epoch's shuffle; reads nothing

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        del self.model._resume_generators
        # Keras removes the checkpoints, not the folder. In a multi-worker run the other
        # workers' temporary folders in it go as each finishes: the last to try removes it.
        try:
            os.rmdir(self.backup_dir)
        except OSError:
            pass


def _dropout_generators(model):
    """The ``tf.random.Generator`` each dropout layer of ``model`` draws from. A layer on
    Keras' default stateful random ops (whose state no checkpoint can hold) is moved to
    Keras' "stateful" generator first, seeded from Keras' seed; a layer loaded from a file
    saved after that has one already."""
    generators = {}
    for layer in model.submodules:
        generator = getattr(layer, "_random_generator", None)
        if (not isinstance(layer, keras.layers.Dropout) or generator is None
                or (isinstance(layer.rate, (int, float)) and layer.rate == 0)):
            continue
        if generator._rng_type == generator.RNG_LEGACY_STATEFUL:
            generator = type(generator)(rng_type="stateful")  # Keras' RandomGenerator
            layer._random_generator = generator
        if generator._rng_type == generator.RNG_STATEFUL:
            with model.distribute_strategy.scope():
                generator._maybe_init()
            generators[id(generator._generator)] = generator._generator
    return list(generators.values())
