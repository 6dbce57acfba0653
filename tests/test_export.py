import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.export import litert_invoke, op_names, tflm_invoke, to_tflite
from tinymoe.models import create_model, list_models

SIZE, CLASSES = 96, 4

# Ops that TFLite Micro has no kernel for, or that leave float islands in an int8 model.
FORBIDDEN_OPS = {"GELU", "ONE_HOT", "TOPK_V2", "SCATTER_ND", "SHAPE", "REDUCE_PROD",
                 "DEQUANTIZE", "FlexBitwiseAnd", "CUSTOM"}


@pytest.fixture(scope="module")
def data():
    return synthetic_images(64, SIZE, CLASSES, seed=1)


# The wider dense variants use the same layers as mobilevit_v2_050 and cost two minutes more
# on 2 cores: they run with `make test-slow`.
WIDE = {"mobilevit_v2_075", "mobilevit_v2_100"}


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=pytest.mark.slow) if name in WIDE else name
    for name in list_models()])
def trained(request, data):
    """A registered model after a few fit steps on the tiny synthetic set, and its int8 model."""
    keras.utils.set_random_seed(0)
    images, labels = data
    model = create_model(request.param, num_classes=CLASSES, input_shape=(SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    model.fit(images, labels, batch_size=16, epochs=3, verbose=0)
    return request.param, model, to_tflite(model, images[:32])


def test_int8_model_uses_only_tflm_int8_ops(trained):
    _, _, tflite_bytes = trained
    ops = set(op_names(tflite_bytes))
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=tflite_bytes)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape"]) == [1, SIZE, SIZE, 3]


def test_tflm_output_matches_litert_reference_kernels(trained, data):
    name, _, tflite_bytes = trained
    images = data[0][32:40]
    micro = tflm_invoke(tflite_bytes, images, dequantize_output=False).astype(int)
    lite = litert_invoke(tflite_bytes, images, dequantize_output=False).astype(int)
    assert micro.shape == (8, CLASSES)
    # An exported mixture of experts concatenates its experts' outputs, requantised from
    # each expert's scale to one: TFLM and LiteRT round those a little differently.
    assert np.abs(micro - lite).max() <= (3 if "moe" in name else 1)


def test_tflm_int8_agrees_with_keras_float_on_top1(trained, data):
    name, model, tflite_bytes = trained
    images = data[0][32:64]
    float_top1 = np.argmax(model(images, training=False).numpy(), axis=1)
    int8_top1 = np.argmax(tflm_invoke(tflite_bytes, images), axis=1)
    agreement = float(np.mean(float_top1 == int8_top1))
    assert agreement >= 0.9, f"{name}: float/int8 top-1 agreement {agreement:.2f}"


def test_tflm_invoke_refuses_a_wrong_image_shape(trained):
    _, _, tflite_bytes = trained
    with pytest.raises(ValueError, match=r"takes images of shape \(96, 96, 3\), got .*\(2, 64, 64, 3\)"):
        tflm_invoke(tflite_bytes, np.zeros((2, 64, 64, 3), np.float32))


def test_to_tflite_refuses_representative_data_of_the_wrong_shape():
    model = create_model("mobilevit_v2_050", num_classes=2, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"images of shape \(64, 64, 3\), got .*\(4, 32, 32, 3\)"):
        to_tflite(model, np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="Representative data is empty"):
        to_tflite(model, np.zeros((0, 64, 64, 3), np.float32))
