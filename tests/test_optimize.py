"""Pruning and quantisation-aware training (tfmot) through conversion and TFLite Micro."""

import os

import numpy as np
import pytest

from conftest import synthetic_images
from int8_ops import assert_ops_agree
from tinymoe.augment import make_dataset
from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.export import litert_invoke, quantize, tflm_invoke, to_tflite
from tinymoe.layers.building import kernel_slots
from tinymoe.layers.int8 import Int8Points, int8_range_variables
from tinymoe.models import create_model
from tinymoe.optimize import (prune, pruning_callbacks, quantize_aware, sparsity_report,
                              strip_pruning, strip_quantization, unquantized_layers)
from tinymoe.pipeline import evaluate, evaluate_tflite
from tinymoe.train import TrainConfig, fit

SIZE, CLASSES = 32, 4


def _tflite_kernel_sparsity(tflite_bytes):
    """Share of zeros in the int8 filters of every CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED op of a .tflite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    total = zeros = 0
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = interpreter.get_tensor(op["inputs"][1])
            total += weights.size
            zeros += int(np.sum(weights == 0))
    return zeros / total


def test_quantize_aware_wraps_every_layer_and_every_kernel():
    model = create_model("mobilevit_v2_moe_050", num_classes=CLASSES, input_shape=(SIZE, SIZE, 3))
    qat = quantize_aware(model)
    assert unquantized_layers(qat) == []
    assert unquantized_layers(model)  # the float model is not quantised: the check can fail
    kernels = {layer.name: len(kernel_slots(layer)) for layer in model.layers}
    for layer in qat.layers:
        if hasattr(layer, "_weight_vars"):
            name = layer.layer.name
            assert len(layer._weight_vars) == kernels[name], name
            # Our layers quantise every tensor inside them, their output included (their
            # last int8 point); tfmot quantises the output of a Keras layer.
            ours = isinstance(layer.layer, Int8Points)
            assert bool(layer._output_quantizers) != ours, name
            assert not ours or int8_range_variables(layer.layer), name
    assert sum(len(getattr(layer, "_weight_vars", [])) for layer in qat.layers) == sum(
        kernels.values())
    # Experts are quantised per (expert, hidden unit), as the converter will see them.
    moe = [layer for layer in qat.layers if layer.name == "quant_stage4_mvit"][0]
    axes = {quantizer.channel_axes for _, quantizer, _ in moe._weight_vars}
    assert (0, 2) in axes and (2,) in axes


def test_pruning_reaches_the_target_and_keeps_it_through_qat_and_conversion():
    images, labels = synthetic_images(64, SIZE, CLASSES)
    train = make_dataset(images, labels, CLASSES, 16, training=True)
    model = create_model("mobilevit_v2_moe_050", num_classes=CLASSES, input_shape=(SIZE, SIZE, 3))
    pruned = prune(model, 0.5, end_step=6, frequency=2)
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, warmup_epochs=0)
    fit(pruned, train, None, config, verbose=0, run_eagerly=True,
        callbacks=pruning_callbacks())
    stripped = strip_pruning(pruned)
    report = sparsity_report(stripped)
    assert abs(report["sparsity"] - 0.5) <= 0.01
    assert all(abs(row["sparsity"] - 0.5) <= 0.01 for row in report["layers"].values())
    router = stripped.get_layer("stage4_mvit").transformer[-1].ffn.router_kernel.numpy()
    assert np.mean(router == 0) < 0.1  # routers stay dense by default
    qat = quantize_aware(stripped, preserve_sparsity=True)
    fit(qat, train, None, config, verbose=0, run_eagerly=True)
    after = strip_quantization(qat)
    assert abs(sparsity_report(after)["sparsity"] - 0.5) <= 0.01
    assert _tflite_kernel_sparsity(to_tflite(qat, images[:16])) >= 0.49


def test_qat_kernels_sit_on_the_int8_grid_the_converter_uses():
    images, labels = synthetic_images(32, SIZE, CLASSES)
    model = create_model("mobilevit_v2_moe_050", num_classes=CLASSES, input_shape=(SIZE, SIZE, 3))
    qat = quantize_aware(model)
    qat.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    qat.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    stripped = strip_quantization(qat)
    moe = stripped.get_layer("stage5_mvit").transformer[-1].ffn
    kernel = moe.expert_kernel_in.numpy()  # [E, d, h]: one channel per (expert, unit)
    scale = np.abs(kernel).max(axis=1, keepdims=True) / 127.0
    levels = kernel / scale
    assert np.allclose(levels, np.round(levels), atol=1e-3)
    assert len(np.unique(np.round(levels))) <= 255


@pytest.fixture(scope="module")
def digits_qat():
    """MobileViTv2-0.5 trained on digits, then one QAT epoch and conversion to int8."""
    keras.utils.set_random_seed(0)
    data = load_dataset("digits", SIZE)
    x_train, y_train = data.split("train")
    train = make_dataset(x_train, y_train, data.num_classes, 32, training=True)
    model = create_model("mobilevit_v2_050", num_classes=data.num_classes,
                         input_shape=(SIZE, SIZE, 3))
    fit(model, train, None, TrainConfig(epochs=8, batch_size=32, warmup_epochs=1), verbose=0)
    qat = quantize_aware(model)
    fit(qat, train, None, TrainConfig(epochs=1, batch_size=32, learning_rate=1e-4,
                                      warmup_epochs=0), verbose=0)
    x_eval = np.concatenate([data.split("val")[0], data.split("test")[0]])
    y_eval = np.concatenate([data.split("val")[1], data.split("test")[1]])
    return model, qat, to_tflite(qat, x_train[:200]), x_eval, y_eval, data.num_classes


def test_qat_int8_in_tflm_is_within_one_point_of_float_on_digits(digits_qat):
    model, qat, tflite_bytes, x_eval, y_eval, num_classes = digits_qat
    float_top1 = evaluate(model, x_eval, y_eval, num_classes)
    int8_top1 = evaluate_tflite(tflite_bytes, x_eval, y_eval)
    assert float_top1 > 0.85, float_top1
    assert int8_top1 >= float_top1 - 0.01, (float_top1, int8_top1)


def test_qat_int8_model_agrees_with_litert_op_by_op(digits_qat):
    """TFLM runs every op of the QAT model as LiteRT's reference kernels do: equal, or at
    most 1 LSB apart for an op that requantises (one rounding each: int8_ops.ROUNDING_LSB).
    End to end no LSB count follows: ops that can differ (MUL, LOGISTIC of norms and swish)
    are mid-graph, and later ops grow their 1 LSB by weight-dependent gains."""
    qat, tflite_bytes, x_eval = digits_qat[1], digits_qat[2], digits_qat[3]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    in_scale, in_zero = interpreter.get_input_details()[0]["quantization"]
    out_scale, out_zero = interpreter.get_output_details()[0]["quantization"]
    assert_ops_agree(tflite_bytes, quantize(x_eval[:8], in_scale, in_zero))
    tflm = tflm_invoke(tflite_bytes, x_eval[:16], dequantize_output=False).astype(int)
    litert = litert_invoke(tflite_bytes, x_eval[:16], dequantize_output=False).astype(int)
    assert tflm.shape == litert.shape == (16, digits_qat[5])
    # As in test_export: a few 1-LSB roundings, grown, stay below the int8 error against
    # the float model that was converted, which has half an LSB at every requantisation.
    converted = strip_quantization(qat)
    float_lsb = converted(x_eval[:16], training=False).numpy() / out_scale + out_zero
    assert np.abs(tflm - litert).max() <= np.abs(litert - float_lsb).max()


class _Stop(Exception):
    """A run that ends part-way (a session that closes, a machine that stops)."""


def test_a_stopped_qat_run_resumes_from_its_last_epoch(tmp_path):
    """optimize_run backs QAT up after each epoch; run again with the same out_dir, it
    restores the weights, the quantiser ranges and the optimizer, and trains only the
    epochs left."""
    from tinymoe.pipeline import QAT_BACKUP, optimize_run

    data = load_dataset("digits", SIZE, progress=False)
    keep = np.concatenate([np.flatnonzero(data.splits == s)[:n]
                           for s, n in (("train", 64), ("val", 32))])
    data.images, data.labels = data.images[keep], data.labels[keep]
    data.splits, data.paths = data.splits[keep], data.paths[keep]
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(
        keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    at_stop = {}

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            at_stop["weights"] = [w.numpy().copy() for w in self.model.weights]
            raise _Stop()

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.start = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)
            if self.start is None:  # what training goes on from
                self.start = [w.numpy().copy() for w in self.model.weights]

    kwargs = dict(qat_epochs=3, calibration_images=16, verbose=0)
    with pytest.raises(_Stop):
        optimize_run(model, data, str(tmp_path), callbacks=[StopAfterFirstEpoch()], **kwargs)
    assert not (tmp_path / "model.tflite").exists()
    record = Record()
    _, summary = optimize_run(model, data, str(tmp_path), callbacks=[record], **kwargs)
    assert record.epochs == [1, 2]  # epoch 0 was done before the stop
    names = [w.name for w in model.weights]
    assert len(record.start) == len(at_stop["weights"]) > len(names)  # + quantiser ranges
    for resumed, stopped in zip(record.start, at_stop["weights"]):
        np.testing.assert_array_equal(resumed, stopped)  # restored exactly
    assert summary["qat_epochs"] == 3 and (tmp_path / "model.tflite").exists()
    assert not any(files for _, _, files in os.walk(tmp_path / QAT_BACKUP))  # cleared
