"""Every model the converter returns runs in TFLite Micro, whatever the calibration data."""

import warnings

import numpy as np
import pytest

from tinymoe.backend import keras, tf
from tinymoe.export import check_tflm, to_tflite
from tinymoe.export.convert import floor_softmax_scales
from tinymoe.models import create_model, list_models


def _flat_logits_model():
    """Convolution -> reshape -> softmax whose logits vary by about 1e-8: the form of the
    attention's context scores in an untrained model shown images in [0, 1]."""
    inputs = keras.Input((8, 8, 3))
    scores = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer=keras.initializers.
                                 Constant(1e-10))(inputs)
    outputs = keras.layers.Softmax()(keras.layers.Reshape((64,))(scores))
    return keras.Model(inputs, outputs)


def _convert_unchecked(model, images):
    """The converter's own output, before tinymoe's fix (as to_tflite sets it up)."""
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, 8, 8, 3), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def test_a_softmax_of_nearly_constant_logits_no_longer_aborts_tflm():
    model = _flat_logits_model()
    images = np.random.default_rng(0).random((16, 8, 8, 3)).astype(np.float32)
    raw = _convert_unchecked(model, images)
    # What the converter alone gives aborts the interpreter (the state this test needs).
    broken = check_tflm(raw)
    assert not broken.ok and "aborted" in broken.message
    fixed = to_tflite(model, images)  # verified in TFLM, or it raises
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(fixed)
    details = interpreter.get_input_details(0)
    scale, zero = details["quantization_parameters"]["scales"][0], \
        details["quantization_parameters"]["zero_points"][0]
    quantized = np.clip(np.round(images[:1] / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_input(quantized, 0)
    interpreter.invoke()
    out = interpreter.get_output(0).astype(np.float32)
    out_details = interpreter.get_output_details(0)["quantization_parameters"]
    probabilities = (out - out_details["zero_points"][0]) * out_details["scales"][0]
    # Logits 1e-8 apart: the softmax is 1/64 everywhere to 1e-8; int8 holds it to within
    # one output step (1/256).
    np.testing.assert_allclose(probabilities, model(images[:1]).numpy(), atol=1 / 256)


def test_models_without_such_a_softmax_are_left_byte_for_byte():
    inputs = keras.Input((8, 8, 3))
    logits = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    images = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    raw = _convert_unchecked(model, images)
    assert floor_softmax_scales(raw) == raw


@pytest.mark.slow
@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("pixels", ["unit", "bytes", "constant"])
def test_every_registered_model_runs_in_tflm_for_any_calibration_data(size, pixels):
    """Images in [0, 1) (a common mistake), in [0, 255], and one constant image: every
    registered model, untrained (batch-norm statistics as initialised, which put some
    logits far from the data's), converts and runs (to_tflite checks it in TFLM)."""
    rng = np.random.default_rng(0)
    images = {"unit": rng.random((8, size, size, 3)),
              "bytes": rng.uniform(0, 255, (8, size, size, 3)),
              "constant": np.full((8, size, size, 3), 128.0)}[pixels].astype(np.float32)
    for name in list_models():
        model = create_model(name, num_classes=10, input_shape=(size, size, 3))
        to_tflite(model, images)
