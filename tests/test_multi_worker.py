"""`tinymoe train --distribute multi-worker`: two worker processes on 127.0.0.1 against one
process with two replicas."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tinymoe.pipeline import distribution_strategy

# Each run is a child process: a multi-worker strategy, and the logical devices of the
# one-process run, must be set up before TensorFlow starts its runtime.
PREPARE = """
import sys
from tinymoe.backend import keras
sys.path.insert(0, {tests!r})
from test_evaluate_predict import tiny_model
keras.utils.set_random_seed(0)
tiny_model().save(sys.argv[1])
"""
TRAIN = """
import json, os, sys
from tinymoe.backend import keras, tf

if sys.argv[1] == "mirrored":  # one process, two replicas on two logical CPU devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tinymoe.cli import main

keras.utils.set_random_seed(0)
status = main(["train", "--model", sys.argv[2], "--out", sys.argv[3], "--distribute",
               sys.argv[1], "--epochs", "1", "--batch-size", "16", "--learning-rate", "1e-3",
               "--warmup-epochs", "0", "--augment", "none"])
print(json.dumps({"status": status}))
"""
# The digits' 1,257 training images at 2 x 16 per step: 40 steps, the last one partial.
STEPS, LEARNING_RATE = 40, 2e-3  # global: 2 replicas x the per-replica rate


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _final_weights(path):
    from tinymoe.pipeline import load_model

    return load_model(path).get_weights()


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        distribution_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                    '"task": {"type": "worker", "index": 3}}')
    with pytest.raises(ValueError, match="task index 3 is not one of the 1 workers"):
        distribution_strategy("multi-worker")


def test_two_workers_train_as_one_process_with_two_replicas(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    initial = str(tmp_path / "initial.keras")
    subprocess.run([sys.executable, "-c", PREPARE.format(tests=tests), initial], check=True,
                   capture_output=True, timeout=300)
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    reference = subprocess.run(
        [sys.executable, "-c", TRAIN, "mirrored", initial, str(tmp_path / "one")],
        capture_output=True, text=True, timeout=600, env=env, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", TRAIN, "multi-worker", initial, str(tmp_path / "multi")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(env, TF_CONFIG=json.dumps(config))))
    outputs = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=600)
        finally:
            for other in processes:
                if other.poll() is None and process.returncode is None:
                    other.kill()
        assert process.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs == [{"status": 0}] * 2
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert (one["replicas"], one["batch_size"]) == (multi["replicas"], multi["batch_size"]) \
        == (2, 32)
    assert multi["learning_rate"] == pytest.approx(LEARNING_RATE)
    # Only the chief (worker 0) wrote the run's files; the other worker wrote none.
    assert sorted(os.listdir(tmp_path / "multi")) == ["best.keras", "labels.txt", "log.csv",
                                                      "summary.json"]
    # The same computation: each replica takes the same 16 images per step, its batch norms
    # normalise them alone, and the gradients are averaged over the two replicas (a sum of
    # two numbers, the same either way it is reduced). What may differ is float rounding
    # inside the reduction and the kernels' order of summation: relative differences of a
    # few float32 ulps in a gradient, which Adam passes on as the same relative difference
    # of an update of at most the learning rate per step. Over the STEPS steps a weight can
    # then differ by STEPS x learning rate x 1e-3 at most, a thousandth of what two runs
    # that did not share their gradients would differ by (up to STEPS x learning rate).
    tolerance = STEPS * LEARNING_RATE * 1e-3
    ours = _final_weights(str(tmp_path / "multi" / "best.keras"))
    theirs = _final_weights(str(tmp_path / "one" / "best.keras"))
    initial_weights = _final_weights(initial)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(theirs, initial_weights))
    assert moved > 100 * tolerance, "the reference run did not train"
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))
    assert worst <= tolerance, (worst, tolerance)
