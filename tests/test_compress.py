"""LUT weight compression with TFLite Micro's DECODE op (tinymoe.export.compress)."""

import numpy as np
import pytest
from tensorflow.lite.tools import flatbuffer_utils

from tinymoe.backend import keras
from tinymoe.export import tflm_invoke, to_tflite
from tinymoe.export.compress import bin_channels, lut_compress
from tinymoe.export import model_facts
from tinymoe.layers import ConvBNAct, MoEFeedForward

SIZE = 16


def _moe_model(experts=True):
    """A stem, a feed-forward on 2x2 patches of 64 channels, and a classifier."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = ConvBNAct(64, strides=2, name="stem")(inputs)
    tokens = keras.layers.Reshape((4, 16, 64))(x)
    if experts:
        tokens = MoEFeedForward(num_experts=2, hidden_dim=64, name="moe")(tokens)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Reshape((8, 8, 64))(tokens))
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x))


@pytest.fixture(scope="module")
def model_and_images():
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(0, 255, (16, SIZE, SIZE, 3)).astype(np.float32)
    return to_tflite(_moe_model(), images), images


def test_bin_channels_keeps_at_most_the_levels_per_channel_and_the_nearest_centre():
    values = np.random.default_rng(0).integers(-127, 128, (6, 50)).astype(np.int8)
    values[5] = np.tile(np.array([3, -3], np.int8), 25)  # already two values: unchanged
    binned = bin_channels(values, 4)
    assert all(len(np.unique(row)) <= 4 for row in binned)
    np.testing.assert_array_equal(binned[5], values[5])
    for row, original in zip(binned[:5], values[:5]):
        centres = np.unique(row)
        nearest = centres[np.argmin(np.abs(original[:, None].astype(int) - centres), axis=1)]
        np.testing.assert_array_equal(row, nearest)


def test_compressed_experts_run_in_tflm_as_their_binned_weights(model_and_images):
    tflite_bytes, images = model_and_images
    compressed, info = lut_compress(tflite_bytes, "experts", bits=4)
    assert info["tensors"] == 4  # two experts, two weight matrices each
    assert "DECODE" in model_facts(compressed)[2]
    assert len(compressed) < len(info["binned"])
    # DECODE restores the binned weights exactly: the same int8 output, byte for byte.
    np.testing.assert_array_equal(
        tflm_invoke(compressed, images[:4], dequantize_output=False),
        tflm_invoke(info["binned"], images[:4], dequantize_output=False))
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(info["binned"]))
    experts = [t for t in model.subgraphs[0].tensors if b"/moe/MatMul" in (t.name or b"")
               and t.type == 9 and t.buffer and model.buffers[t.buffer].data is not None]
    assert len(experts) == 4
    for tensor in experts:
        values = np.asarray(model.buffers[tensor.buffer].data).view(np.int8)
        rows = values.reshape(tensor.shape[0], -1)
        assert max(len(np.unique(row)) for row in rows) <= 16


def test_lut_compress_refuses_what_it_cannot_do(model_and_images):
    tflite_bytes, images = model_and_images
    with pytest.raises(ValueError, match="group must be one of"):
        lut_compress(tflite_bytes, "attention")
    with pytest.raises(ValueError, match="bits must be 1 to 7"):
        lut_compress(tflite_bytes, "experts", bits=8)
    dense = to_tflite(_moe_model(experts=False), images)
    with pytest.raises(ValueError, match="no int8 weights in group 'experts'"):
        lut_compress(dense, "experts")
