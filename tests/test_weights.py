"""Pretrained weights: every shipped file loads into its architecture, checksums hold, bad
requests are refused by name, and a pretrained model fine-tunes."""

import json
import os
import shutil

import numpy as np
import pytest

from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.models import create_model, list_models
from tinymoe.pipeline import train_run
from tinymoe.train import TrainConfig
from tinymoe.weights import (available_weights, file_sha256, load_weights, save_weights,
                             weights_card)

SHIPPED = sorted((model, name) for model, names in available_weights().items()
                 for name in names)


def test_the_package_ships_pretrained_weights_for_registered_models():
    assert ("mobilevit_v2_mcu", "tinyimagenet") in SHIPPED
    assert {model for model, _ in SHIPPED} <= set(list_models())


@pytest.mark.parametrize("model_name, weights", SHIPPED)
def test_each_shipped_file_matches_its_card_and_loads_into_its_architecture(model_name,
                                                                             weights):
    card = weights_card(model_name, weights)
    assert file_sha256(card["path"]) == card["sha256"]
    assert os.path.getsize(card["path"]) == card["bytes"]
    for key in ("data", "licence", "recipe", "epochs", "input_size",
                "tinyimagenet_val_top1_float32", "tinyimagenet_val_top1_float16"):
        assert key in card, key
    # float16 storage keeps the accuracy (within one val image in a thousand).
    assert abs(card["tinyimagenet_val_top1_float16"]
               - card["tinyimagenet_val_top1_float32"]) <= 1e-3
    size = card["input_size"] * 2  # the fine-tuning size: weights do not depend on it
    model = create_model(model_name, num_classes=7, input_shape=(size, size, 3),
                         weights=weights)
    with np.load(card["path"]) as stored:
        for layer in model.layers:
            for i, variable in enumerate(layer.weights):
                key = f"{layer.name}/{i}"
                if layer.name == "classifier":
                    assert key not in stored or stored[key].shape != variable.shape
                    continue
                # Loaded exactly: float16 widens to float32 without rounding.
                np.testing.assert_array_equal(variable.numpy(), stored[key].astype(np.float32),
                                              err_msg=key)
    assert model.output_shape == (None, 7)


def test_unknown_weights_a_model_without_weights_and_small_inputs_are_refused():
    with pytest.raises(ValueError, match="no weights named 'imagenet'; it has 'tinyimagenet'"):
        create_model("mobilevit_v2_mcu", num_classes=3, input_shape=(128, 128, 3),
                     weights="imagenet")
    # A MobileViTv2 without weights of its own lists those that have some; the Keras
    # Applications CNNs take only ImageNet's.
    without = next(name for name in list_models()
                   if name not in available_weights() and name.startswith("mobilevit_v2_0"))
    with pytest.raises(ValueError, match=f"{without!r} has no pretrained weights.*"
                                         "mobilevit_v2_mcu: tinyimagenet"):
        create_model(without, num_classes=3, input_shape=(128, 128, 3),
                     weights="tinyimagenet")
    with pytest.raises(ValueError, match="'mobilenet_v2_035' takes weights=None or 'imagenet'"):
        create_model("mobilenet_v2_035", num_classes=3, input_shape=(128, 128, 3),
                     weights="tinyimagenet")
    with pytest.raises(ValueError, match="take RGB images of at least 64x64.*got \\(32, 32, 3\\)"):
        create_model("mobilevit_v2_mcu", num_classes=3, input_shape=(32, 32, 3),
                     weights="tinyimagenet")


def _tiny(num_classes=4):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="classifier")(x),
                       name="tiny")


def test_saved_weights_round_trip_in_float16_and_a_damaged_file_is_refused(tmp_path):
    model = _tiny()
    stem = str(tmp_path / "tiny.test")
    path = save_weights(model, stem, {"model": "tiny", "weights": "test", "input_size": 8})
    card = json.loads((tmp_path / "tiny.test.json").read_text())
    assert card["sha256"] == file_sha256(path) and card["file"] == "tiny.test.npz"
    fresh = load_weights(_tiny(num_classes=9), path)  # another head: left as it was
    conv, stored = fresh.get_layer("conv").get_weights(), model.get_layer("conv").get_weights()
    # Trainable weights in float16: each within half a float16 ulp (2^-11 relative).
    for ours, theirs in zip(conv, stored):
        np.testing.assert_allclose(ours, theirs, rtol=2.0 ** -11, atol=0)
    # Batch-norm statistics are kept in float32, exactly.
    for ours, theirs in zip(fresh.get_layer("norm").weights[2:],
                            model.get_layer("norm").weights[2:]):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    damaged = tmp_path / "damaged.test.npz"
    shutil.copy(path, damaged)
    shutil.copy(tmp_path / "tiny.test.json", tmp_path / "damaged.test.json")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    target = _tiny()
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError, match="damaged or altered"):
        load_weights(target, str(damaged))
    for ours, theirs in zip(target.get_weights(), before):  # nothing half-loaded
        np.testing.assert_array_equal(ours, theirs)


def test_weights_of_another_architecture_are_refused_naming_the_layers(tmp_path):
    path = save_weights(_tiny(), str(tmp_path / "tiny.test"),
                        {"model": "tiny", "weights": "test", "input_size": 8})
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, name="conv")(inputs)  # 6 filters, not 4
    x = keras.layers.BatchNormalization(name="norm")(x)
    other = keras.Model(inputs, keras.layers.Dense(4, name="classifier")(
        keras.layers.GlobalAveragePooling2D()(x)), name="tiny")
    with pytest.raises(ValueError, match="do not fit model 'tiny': conv \\(file"):
        load_weights(other, path)


def test_a_pretrained_model_fine_tunes_on_new_classes(tmp_path):
    """A few steps of train_run from the shipped weights: the classifier is new, the
    backbone starts at the pretrained weights and moves, and the loss falls."""
    data = load_dataset("digits", 64, progress=False)
    keep = np.flatnonzero(data.splits == "train")[:128]
    keep = np.concatenate([keep, np.flatnonzero(data.splits == "val")[:64]])
    data.images, data.labels = data.images[keep], data.labels[keep]
    data.splits, data.paths = data.splits[keep], data.paths[keep]
    keras.utils.set_random_seed(0)
    model, summary = train_run("mobilevit_v2_mcu", data, str(tmp_path / "run"),
                               TrainConfig(epochs=2, batch_size=32, learning_rate=1e-3,
                                           warmup_epochs=0), verbose=0,
                               weights="tinyimagenet")
    assert summary["weights"] == "tinyimagenet"
    log = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)
    assert log["loss"][-1] < log["loss"][0]
    pretrained = create_model("mobilevit_v2_mcu", num_classes=10, input_shape=(64, 64, 3),
                              weights="tinyimagenet")
    stem = [w for layer in model.layers if layer.name.startswith("stem")
            for w in layer.trainable_weights]
    start = [w for layer in pretrained.layers if layer.name.startswith("stem")
             for w in layer.trainable_weights]
    assert stem and any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(stem, start))
    # ... but no further than the optimiser can take it from the pretrained start: AdamW moves
    # a weight by at most lr x (1 - beta_1) / sqrt(1 - beta_2) per step (3.2 lr at Keras's
    # betas) plus the decay lr x weight_decay x |w|, over 2 epochs of 4 steps.
    steps, lr = 8, 1e-3
    for a, b in zip(stem, start):
        bound = steps * lr * (0.1 / np.sqrt(0.001) + 0.05 * float(np.max(np.abs(b.numpy()))))
        assert float(np.max(np.abs(a.numpy() - b.numpy()))) <= bound, a.name


def test_cli_train_refuses_weights_a_model_lacks_before_loading_data(capsys, tmp_path):
    from tinymoe.cli import main

    status = main(["train", "--model", "mobilevit_v2_100", "--weights", "tinyimagenet",
                   "--data", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "o")])
    assert status == 2
    assert "'mobilevit_v2_100' has no pretrained weights" in capsys.readouterr().err
    assert main(["train", "--model", "mobilevit_v2_mcu", "--weights", "tinyimagenet",
                 "--input-size", "32", "--out", str(tmp_path / "o")]) == 2
    assert "at least 64x64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_upcycles_a_pretrained_dense_model(tmp_path, monkeypatch):
    """`tinymoe upcycle` from a model started at the shipped dense-0.5 weights: every shared
    layer keeps the pretrained weights and every expert is the pretrained feed-forward."""
    from conftest import synthetic_images
    from tinymoe.diagnosis import expert_vectors, feedforward_vector
    from tinymoe.cli import main
    from tinymoe.data import ImageData
    from tinymoe.models.dispatch import moe_layers
    from tinymoe.pipeline import load_model

    assert ("mobilevit_v2_050", "tinyimagenet") in SHIPPED
    images, labels = synthetic_images(8, 64, 3)
    data = ImageData(images.astype(np.uint8), labels, np.array(["train"] * 8), ["a", "b", "c"],
                     np.array([""] * 8))
    monkeypatch.setattr("tinymoe.data.load_dataset", lambda source, size: data)
    dense = create_model("mobilevit_v2_050", num_classes=3, input_shape=(64, 64, 3),
                         weights="tinyimagenet")
    dense.save(tmp_path / "dense.keras")
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(tmp_path / "moe.keras"),
                 "--experts", "2", "--images", "8"]) == 0
    moe = load_model(str(tmp_path / "moe.keras"))
    np.testing.assert_array_equal(moe.get_layer("stem").get_weights()[0],
                                  dense.get_layer("stem").get_weights()[0])
    for key, layer in moe_layers(moe).items():
        block, index = key.split("/")
        ffn = dense.get_layer(block).transformer[int(index.rsplit("_", 1)[1])].ffn
        for expert in expert_vectors(layer):
            np.testing.assert_array_equal(expert, feedforward_vector(ffn))
