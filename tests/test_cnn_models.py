"""Keras Applications' CNNs in the zoo: built for any classes and input, pixels in [0, 255],
ImageNet weights from the Keras cache with their SHA-256 checked, and a clear error where
the weights cannot be had."""

import hashlib

import numpy as np
import pytest

from tinymoe.backend import keras
from tinymoe.models import check_weights, create_model, get_config
from tinymoe.models import cnn


def test_a_cnn_takes_pixels_and_trains_its_batch_norms_from_random_weights():
    model = create_model("mobilenet_v2_035", num_classes=7, input_shape=(64, 64, 3))
    assert model.output_shape == (None, 7)
    assert model.get_layer("rescale").scale == pytest.approx(1 / 127.5)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.trainable and layer.momentum == 0.99 for layer in norms)
    # Flat: tfmot's QAT sees every layer (a nested backbone model would be refused).
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def fake_imagenet_file(tmp_path, monkeypatch):
    """A MobileNetV2-0.35 weights file in a Keras cache of the test's own, accepted as
    Keras' file (its SHA-256 patched in): the loading path without the real file."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None,
                                            input_shape=(224, 224, 3))
    path = cnn.keras_weights_path(get_config("mobilenet_v2_035").imagenet_file().file)
    (tmp_path / "models").mkdir()
    source.save_weights(path)
    with open(path, "rb") as handle:
        monkeypatch.setattr(cnn, "MOBILENET_V2_035_SHA256",
                            hashlib.sha256(handle.read()).hexdigest())
    return source, path


def _assert_same_weights(model, source, names):
    """The layers ``names`` of ``model`` hold exactly the weights of ``source``'s."""
    for name in names:
        for got, want in zip(model.get_layer(name).get_weights(),
                             source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_imagenet_weights_load_from_the_keras_cache_and_freeze_the_statistics(
        tmp_path, monkeypatch):
    source, _ = fake_imagenet_file(tmp_path, monkeypatch)
    model = create_model("mobilenet_v2_035", num_classes=5, input_shape=(96, 96, 3),
                         weights="imagenet")
    _assert_same_weights(model, source, ("Conv1", "block_3_expand", "Conv_1_bn"))
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    assert model.get_layer("classifier").trainable


def test_a_file_that_is_not_keras_one_is_refused(tmp_path, monkeypatch):
    _, path = fake_imagenet_file(tmp_path, monkeypatch)
    monkeypatch.setattr(cnn, "MOBILENET_V2_035_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        create_model("mobilenet_v2_035", num_classes=5, input_shape=(96, 96, 3),
                     weights="imagenet")


def test_missing_imagenet_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # as get_file behaves without the internet
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ValueError) as error:
        create_model("mobilenet_v2_035", num_classes=5, input_shape=(96, 96, 3),
                     weights="imagenet")
    message = str(error.value)
    assert str(tmp_path) in message and "storage.googleapis.com" in message
    assert "benchmarks/imagenet_weights.py" in message and "name resolution" in message


@pytest.mark.parametrize("name,weights,message", [
    ("mobilenet_v3_small_070", "imagenet", "no ImageNet weights"),
    ("mobilenet_v2_035", "tinyimagenet", "takes weights=None or 'imagenet'"),
])
def test_weights_a_cnn_does_not_have_are_refused_before_anything_loads(name, weights, message):
    with pytest.raises(ValueError, match=message):
        check_weights(name, weights, (128, 128, 3))


def test_inputs_a_cnn_cannot_take_are_refused():
    with pytest.raises(ValueError, match="at least 32x32"):
        create_model("mobilenet_v2_035", num_classes=5, input_shape=(16, 16, 3))


@pytest.mark.skipif(not __import__("os").path.isfile(cnn.keras_weights_path(
    get_config("mobilenet_v2_035").imagenet_file().file)),
    reason="the real ImageNet file is not on this machine (benchmarks/imagenet_weights.py "
           "rebuilds it; Keras downloads it where the internet is reachable)")
def test_the_real_imagenet_file_is_keras_own():
    model = create_model("mobilenet_v2_035", num_classes=3, input_shape=(128, 128, 3),
                         weights="imagenet")
    assert model.count_params() == 410208 + 1280 * 3 + 3


def test_the_hybrid_takes_the_imagenet_trunk_and_trains_its_own_stages(tmp_path, monkeypatch):
    source, _ = fake_imagenet_file(tmp_path, monkeypatch)
    model = create_model("mobilevit_v2_mnv2_035", num_classes=5, input_shape=(128, 128, 3),
                         weights="imagenet")
    # The trunk is MobileNetV2-0.35 to block 12 with the file's weights, statistics frozen...
    _assert_same_weights(model, source, ("Conv1", "block_12_project", "block_12_project_BN"))
    assert not model.get_layer("block_12_project_BN").trainable
    names = [layer.name for layer in model.layers]
    assert "block_13_expand" not in names and "Conv_1" not in names  # cut at block_12_add
    # ... then tinymoe's stage: an inverted residual to 4x4 and a MobileViTv2 block.
    assert model.get_layer("head1_mvit").output_shape == (None, 4, 4, 160)
    assert model.output_shape == (None, 5)
