import os

import numpy as np
import pytest

from tinymoe.augment import AugmentConfig, make_dataset
from tinymoe.backend import tf
from tinymoe.data import (load_dataset, load_digits, load_image_folder, read_image, read_labels,
                          scan_image_folder, write_labels)


def write_image(path, seed, size=20):
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(pixels))


@pytest.fixture
def folder(tmp_path):
    """Three classes (written out of order) of three 20x20 JPEGs each."""
    root = tmp_path / "images"
    for c, name in enumerate(["wren", "finch", "robin"]):
        for i in range(3):
            write_image(str(root / name / f"{i}.jpg"), seed=10 * c + i)
    return root


def test_class_order_is_sorted_and_images_are_resized(folder):
    data = load_image_folder(str(folder), 16, progress=False)
    assert data.class_names == ["finch", "robin", "wren"]
    assert data.hashed_splits and not load_digits(8).hashed_splits
    assert data.images.shape == (9, 16, 16, 3) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [3, 3, 3]
    again = load_image_folder(str(folder), 16, progress=False)
    np.testing.assert_array_equal(again.splits, data.splits)  # the hash split is stable


def test_a_truncated_jpeg_is_skipped_and_counted_in_one_warning(folder):
    good = (folder / "finch" / "0.jpg").read_bytes()
    (folder / "finch" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (folder / "robin" / "text.jpg").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="Skipped 2 unreadable image") as record:
        data = load_image_folder(str(folder), 16, progress=False)
    assert len(record) == 1
    message = str(record[0].message)  # each file named, what is wrong said in plain words
    for name in ("finch/broken.jpg", "robin/text.jpg"):
        assert f"{folder / name}: not a JPEG/PNG/BMP/GIF image or truncated; skipped" in message
    assert "function_node" not in message and "{{" not in message
    assert len(data.images) == 9
    assert not any("broken" in p or "text" in p for p in data.paths)


def test_read_image_says_why_a_file_cannot_be_read(folder, tmp_path):
    assert read_image(str(folder / "wren" / "0.jpg"), 8).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="gone.png: cannot be read \\(No such file"):
        read_image(str(tmp_path / "gone.png"), 8)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png: not a JPEG/PNG/BMP/GIF image"):
        read_image(str(tmp_path / "empty.png"), 8)


def test_labels_files_round_trip_and_refuse_empty(tmp_path):
    write_labels(str(tmp_path / "labels.txt"), ["wren", "song thrush"])
    assert read_labels(str(tmp_path / "labels.txt")) == ["wren", "song thrush"]
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="names no class"):
        read_labels(str(tmp_path / "blank.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        read_labels(str(tmp_path / "missing.txt"))


def test_an_empty_class_folder_is_an_error_naming_it(folder):
    (folder / "empty_species").mkdir()
    with pytest.raises(ValueError, match="empty_species.*has no images"):
        scan_image_folder(str(folder))


def test_split_file_is_respected(folder):
    split = folder.parent / "splits.csv"
    split.write_text("path,species,split\n"
                     "images/finch/0.jpg,finch,train\nimages/finch/1.jpg,finch,val\n"
                     "images/robin/0.jpg,robin,test\nimages/wren/2.jpg,wren,train\n")
    data = load_dataset(str(folder.parent), 16, progress=False)
    assert len(data.images) == 4 and not data.hashed_splits
    assert data.splits.tolist() == ["train", "val", "test", "train"]
    assert data.labels.tolist() == [0, 0, 1, 2]
    x_val, y_val = data.split("val")
    assert len(x_val) == 1 and y_val.tolist() == [0]


def test_split_file_naming_a_missing_file_is_an_error(folder):
    split = folder.parent / "splits.csv"
    split.write_text("path,species,split\nimages/finch/0.jpg,finch,train\n"
                     "images/finch/gone.jpg,finch,val\n")
    with pytest.raises(ValueError, match="names 1 missing file.*images/finch/gone.jpg"):
        scan_image_folder(str(folder), str(split))


def test_missing_folder_and_unknown_split_are_errors(tmp_path, folder):
    with pytest.raises(ValueError, match="does not exist"):
        scan_image_folder(str(tmp_path / "nowhere"))
    split = folder.parent / "splits.csv"
    split.write_text("path,species,split\nimages/finch/0.jpg,finch,holdout\n")
    with pytest.raises(ValueError, match="split 'holdout' is not one of"):
        scan_image_folder(str(folder), str(split))


def test_digits_default_needs_no_download():
    data = load_digits(32)
    assert data.images.shape == (1797, 32, 32, 3)
    assert data.num_classes == 10
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 1257, "val": 269, "test": 271}
    assert data.images.max() == 255 and data.images.min() == 0


def test_dataset_batches_one_hot_labels_and_augments_within_range():
    data = load_digits(32)
    x, y = data.split("train")
    plain = make_dataset(x[:40], y[:40], 10, batch_size=16)
    images, labels = next(iter(plain))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    np.testing.assert_array_equal(np.argmax(labels, 1), y[:16])
    config = AugmentConfig(crop=True, flip=True, rand_augment=True, mixup_alpha=0.2)
    augmented = make_dataset(x[:40], y[:40], 10, batch_size=16, training=True, augment=config)
    images, labels = next(iter(augmented))
    assert images.shape == (16, 32, 32, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    np.testing.assert_allclose(np.sum(labels, 1), 1.0, rtol=1e-5)  # MixUp keeps a distribution
    with pytest.raises(ValueError, match="40 images but 39 labels"):
        make_dataset(x[:40], y[:39], 10)


def test_images_that_look_normalised_get_a_plain_warning_where_they_enter():
    """Photos already divided by 255 reach a tinymoe model as near-black pictures."""
    import warnings

    from tinymoe.augment import make_dataset
    from tinymoe.backend import keras
    from tinymoe.data import warn_if_normalised
    from tinymoe.evaluation import keras_logits, tflite_logits
    from tinymoe.export import to_tflite

    rng = np.random.default_rng(0)
    unit = rng.random((4, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.warns(UserWarning, match=r"to_tflite .*look.* normalised.*\[0, 255\]"):
        tflite_bytes = to_tflite(model, unit)
    for call, where in ((lambda: keras_logits(model, unit), "the Keras model"),
                        (lambda: tflite_logits(tflite_bytes, unit), "the int8 model"),
                        (lambda: make_dataset(unit, np.zeros(4, int), 3), "make_dataset")):
        with pytest.warns(UserWarning, match=f"{where}: the images' values lie in"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pixels, uint8 and blank images are not flagged
        for fine in (unit * 255, (unit * 255).astype(np.uint8), np.zeros_like(unit)):
            assert not warn_if_normalised(fine, "test")
        keras_logits(model, unit * 255)


def test_decoding_into_a_file_writes_one_line_and_a_terminal_gets_the_bar(folder, monkeypatch):
    """`tinymoe train ... > log.txt 2>&1`: the "decoding images" bar was hundreds of
    carriage-return updates on one line there; off a terminal it is one line when done."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream in (io.StringIO(), Terminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        data = load_image_folder(str(folder), 16)
        assert len(data.images) == 9
        text = stream.getvalue()
        if isinstance(stream, Terminal):
            assert "\r" in text and "decoding images: 100%" in text
        else:
            assert "\r" not in text and len(text.splitlines()) == 1
            assert text.startswith("decoding images: 9 img in ") and text.endswith(" s\n")
