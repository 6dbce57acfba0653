"""`tinymoe train` stopped part-way and started again goes on where it stopped (issue 38)."""

import os

import numpy as np
import pytest

from tinymoe import pipeline, resume
from tinymoe.augment import AugmentConfig
from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.resume import TRAIN_BACKUP, TrainingBackup
from tinymoe.train import TrainConfig


class _Stop(Exception):
    """Stands for the process being killed."""


class _StoppedAfterFirstEpoch(TrainingBackup):
    """The backup of a run killed right after its first epoch was backed up."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        raise _Stop()


@pytest.fixture(scope="module")
def small_digits():
    data = load_dataset("digits", 32, progress=False)
    keep = np.concatenate([np.flatnonzero(data.splits == s)[:n]
                           for s, n in (("train", 96), ("val", 32))])
    data.images, data.labels = data.images[keep], data.labels[keep]
    data.splits, data.paths = data.splits[keep], data.paths[keep]
    return data


def _initial_model(path):
    """Batch norm (moving statistics), dropout (random masks: Keras' default random ops,
    and a generator as in a file train_run saved) and a classifier."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, use_bias=False)(
        keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dropout(0.2, rng_type="stateful")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(path)
    return str(path)


def test_a_stopped_training_run_resumes_and_ends_as_an_unbroken_run(small_digits, tmp_path,
                                                                    monkeypatch):
    """Seeded, stopped after epoch 1 of 2 and run again with the same arguments, train_run
    trains epoch 2 only and ends with the unbroken run's model, log and best checkpoint.

    Tolerance 0: the tests run TensorFlow's deterministic kernels (as `tinymoe train --seed`
    does) and both runs are in this process on this CPU, so the resumed epoch computes the
    same floats from the same state; everything the state is made of (weights, batch-norm
    statistics, optimizer moments and step, shuffle order, crops and flips, dropout masks)
    must be restored exactly for that, and any part left out moves the weights by far more
    than a rounding (0.13 for the dropout masks alone, measured on mobilevit_v2_mcu)."""
    initial = _initial_model(tmp_path / "initial.keras")
    config = TrainConfig(epochs=2, batch_size=32, warmup_epochs=0, save_epochs=(2,))
    augment = AugmentConfig(crop=True, flip=True)

    def train(out):
        return pipeline.train_run(initial, small_digits, str(tmp_path / out), config, augment,
                                  verbose=0, seed=7)

    _, unbroken = train("unbroken")
    monkeypatch.setattr(resume, "TrainingBackup", _StoppedAfterFirstEpoch)
    with pytest.raises(_Stop):
        train("stopped")
    stopped = tmp_path / "stopped"
    assert sorted(os.listdir(stopped)) == ["best.keras", "log.csv", TRAIN_BACKUP]
    monkeypatch.setattr(resume, "TrainingBackup", TrainingBackup)
    _, resumed = train("stopped")
    assert resumed["resumed_after_epoch"] == 1 and unbroken["resumed_after_epoch"] is None
    assert sorted(os.listdir(stopped)) == sorted(os.listdir(tmp_path / "unbroken")) == [
        "best.keras", "epoch2.keras", "labels.txt", "log.csv", "summary.json"]
    # Both epochs' lines, the second written by the resumed run: the same numbers.
    log = (stopped / "log.csv").read_text()
    assert log == (tmp_path / "unbroken" / "log.csv").read_text() and log.count("\n") == 3
    for name in ("epoch2.keras", "best.keras"):
        ours = keras.models.load_model(stopped / name, compile=False).get_weights()
        theirs = keras.models.load_model(tmp_path / "unbroken" / name, compile=False)
        for a, b in zip(ours, theirs.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert resumed["val_accuracy"] == unbroken["val_accuracy"]
    assert resumed["final_train_accuracy"] == unbroken["final_train_accuracy"]


def test_a_backup_the_run_cannot_go_on_from_is_refused(small_digits, tmp_path, monkeypatch):
    initial = _initial_model(tmp_path / "initial.keras")
    monkeypatch.setattr(resume, "TrainingBackup", _StoppedAfterFirstEpoch)
    with pytest.raises(_Stop):
        pipeline.train_run(initial, small_digits, str(tmp_path / "run"),
                           TrainConfig(epochs=3, warmup_epochs=0), verbose=0)
    with pytest.raises(ValueError, match="stopped after epoch 1, which this run \\(epochs 1 "
                                         "to 1\\) cannot go on from"):
        pipeline.train_run(initial, small_digits, str(tmp_path / "run"),
                           TrainConfig(epochs=1, warmup_epochs=0), verbose=0)
