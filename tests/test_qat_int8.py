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
