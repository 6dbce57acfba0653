"""Quantisation-aware training simulates the int8 model: every tensor the converter quantises
inside our layers is fake-quantised in training, and after calibration with the scale and
zero point the int8 model has."""

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.models import create_model
from tinymoe.optimize import (calibrate_int8_ranges, int8_point_trace, quantising_ops,
                              quantize_aware, strip_quantization)

SIZE, CLASSES = 32, 4


@pytest.fixture(scope="module")
def calibrated_qat():
    """A small MoE model (convolutions, layer norms, attention, experts) after one QAT epoch,
    calibrated to (and converted with) 8 images."""
    keras.utils.set_random_seed(0)
    images, labels = synthetic_images(32, SIZE, CLASSES)
    model = create_model("mobilevit_v2_moe_050", num_classes=CLASSES,
                         input_shape=(SIZE, SIZE, 3))
    qat = quantize_aware(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    return qat, calibrate_int8_ranges(qat, images[:8]), images


def test_qat_quantises_every_tensor_the_int8_model_quantises_alike(calibrated_qat):
    qat, tflite_bytes, images = calibrated_qat
    ops = quantising_ops(tflite_bytes)
    trace = int8_point_trace(qat, images[0])
    # Every int8 tensor of our layers has its point, in execution order, and only the
    # pooling's MEAN and the classifier (Keras layers, quantised by tfmot) follow.
    assert len(trace) == len(ops) - 2 and len(trace) > 300
    assert [op for op, *_ in ops[-2:]] == ["MEAN", "FULLY_CONNECTED"]
    names = {point for _, point, _, _ in trace}
    assert {"variance", "rsqrt", "context", "router", "expert_out", "gated"} <= names
    pairs = {(point, op) for (_, point, _, _), (op, *_) in zip(trace, ops)}
    assert {("rsqrt", "RSQRT"), ("softmax", "SOFTMAX"), ("sigmoid_up", "LOGISTIC"),
            ("context", "BATCH_MATMUL"), ("gated", "MUL")} <= pairs
    for (op, name, scale, zero), (layer, point, our_scale, our_zero) in zip(ops, trace):
        # Each point quantises as its tensor: the range is set from that tensor's scale and
        # zero point, and read back here through the float32 range variable (relative
        # rounding 6e-8, far below the 1e-5 asked).
        assert our_scale == pytest.approx(scale, rel=1e-5), (op, name, layer, point)
        assert our_zero == zero, (op, name, layer, point)
    # The float model the converter sees holds no ranges.
    assert not [w.name for w in strip_quantization(qat).weights if "int8_" in w.name]


def test_calibration_refuses_an_int8_graph_that_does_not_line_up(calibrated_qat):
    """Against the int8 model of the dense twin (no experts, and untrained: its norms' last
    MUL and ADD fold away), the points do not line up; nothing is changed."""
    from tinymoe.export import to_tflite
    from tinymoe.optimize.int8_ranges import _adopt_int8_ranges

    qat, _, images = calibrated_qat
    dense = create_model("mobilevit_v2_050", num_classes=CLASSES, input_shape=(SIZE, SIZE, 3))
    before = int8_point_trace(qat, images[0])
    with pytest.raises(ValueError, match="attn_norm/scaled lines up with CONV_2D .*does not "
                                         "mirror the int8 graph"):
        _adopt_int8_ranges(qat, to_tflite(dense, images[:4], verify=False), images[0], [])
    assert int8_point_trace(qat, images[0]) == before


def test_a_token_of_tiny_variance_does_not_stretch_the_rsqrt_range():
    """A token whose variance rounds to an int8 0 gets the top of the RSQRT range in int8, as
    calibrated on the float model; its 1/sqrt(epsilon) must not become that top in QAT.

    Tokens of +-3 (variance 9: the variance's int8 step is 9 / 255 = 0.035) and one of +-0.1
    (variance 0.01, under half a step, so its int8 variance is 0). The float model's
    reciprocals are 1/3 and 1/sqrt(0.01 + 1e-5) = 9.995, the range calibration would give.
    """
    from tinymoe.layers import LayerNorm
    from tinymoe.layers.int8 import enable_int8_simulation

    signs = np.where(np.arange(8) % 2 == 0, 1.0, -1.0).astype(np.float32)
    x = np.stack([3.0 * signs] * 7 + [0.1 * signs])[None, None]  # [1, 1, 8 tokens, 8]
    norm = LayerNorm(epsilon=1e-5)
    norm.build(x.shape)
    enable_int8_simulation(norm)
    norm(x, training=True)  # the first batch sets every range
    low, high, _ = norm._int8_ranges["rsqrt"].numpy()
    np.testing.assert_allclose(high, 1 / np.sqrt(0.01 + 1e-5), rtol=1e-5)
    assert low == pytest.approx(1 / 3, rel=1e-5)
    # The other tokens keep their normalised values, +-1, to within 0.1. Half an rsqrt step
    # (10 / 255 / 2 = 0.0196) times |centred| = 3 is 0.059; the centred, normalised, scaled
    # and output points add half a step each, under 0.02 together. With the range stretched
    # to 316 one rsqrt step is 1.24, 1/3 rounds to 0 and every output is 0: an error of 1.
    out = norm(x, training=False).numpy()[0, 0]
    reference = x[0, 0] / np.sqrt(x[0, 0].var(axis=-1, keepdims=True) + 1e-5)
    assert np.abs(out[:7] - reference[:7]).max() < 0.1



def test_a_qat_model_saves_and_loads_as_keras_and_trains_on(tmp_path):
    """The model a user spent QAT epochs on, kept as a .keras file: tfmot's input quantiser
    made its variables twice when Keras loaded it and its wrappers listed the wrapped
    layers' weights only when built before ("expected 5 variables, but received 3"). Loaded
    (tinymoe's load_model, or Keras' inside quantize_scope), every weight, quantiser range
    and step comes back, so the same logits bit for bit (same graph, same values, this
    process's deterministic kernels: tolerance 0), and it trains and saves again."""
    from tinymoe.optimize import is_quantize_aware, quantize_scope
    from tinymoe.pipeline import load_model

    from tinymoe.layers import ConvBNAct, MobileViTV2Block

    images, labels = synthetic_images(16, SIZE, CLASSES)
    inputs = keras.Input((SIZE, SIZE, 3))  # a stem, one transformer layer with experts
    x = ConvBNAct(16, strides=4)(keras.layers.Rescaling(1 / 255)(inputs))
    x = MobileViTV2Block(16, 32, 1, moe_layers=(0,), moe={"num_experts": 2})(x)
    x = keras.layers.Dropout(0.1)(keras.layers.GlobalAveragePooling2D()(x))
    qat = quantize_aware(keras.Model(inputs, keras.layers.Dense(CLASSES)(x)))
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(images, labels, batch_size=16, epochs=1, verbose=0)  # ranges and step move
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = load_model(path)
    with quantize_scope():
        also = keras.models.load_model(path, compile=False)
    assert is_quantize_aware(loaded) and len(loaded.weights) == len(qat.weights)
    for ours, theirs in zip(loaded.weights, qat.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=theirs.name)
    expected = qat(images[:4], training=False).numpy()
    np.testing.assert_array_equal(loaded(images[:4], training=False).numpy(), expected)
    np.testing.assert_array_equal(also(images[:4], training=False).numpy(), expected)
    loaded.compile("adam", "sparse_categorical_crossentropy")
    loaded.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    loaded.save(str(tmp_path / "again.keras"))
    again = load_model(str(tmp_path / "again.keras"))
    np.testing.assert_array_equal(again(images[:4], training=False).numpy(),
                                  loaded(images[:4], training=False).numpy())
