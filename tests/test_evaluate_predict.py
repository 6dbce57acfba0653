"""`tinymoe evaluate` and `tinymoe predict` on the digits and on tiny image folders, for
.keras (float) and .tflite (int8 in TFLite Micro) models."""

import csv
import json
import os

import numpy as np
import pytest

from tinymoe.backend import keras, tf
from tinymoe.classifier import evaluate_run, load_classifier, predict_run
from tinymoe.cli import main
from tinymoe.data import load_dataset, read_image
from tinymoe.evaluation import accuracy_report, keras_logits, tflite_logits
from tinymoe.pipeline import optimize_run, train_run
from tinymoe.train import TrainConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNREADABLE = "not a JPEG/PNG/BMP/GIF image or truncated; skipped"


def tiny_model(size=32, num_classes=10):
    """A 5k-parameter convolutional classifier: above 0.9 top-1 on the digits in 3 epochs."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 32, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """The tiny model trained on the digits (train_run), then made int8 (optimize_run)."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("trained")
    _, train_summary = train_run(tiny_model(), digits, str(root / "dense"),
                                 TrainConfig(epochs=3, learning_rate=1e-2, warmup_epochs=0),
                                 verbose=0)
    _, int8_summary = optimize_run(train_summary["best"], digits, str(root / "int8"),
                                   qat_epochs=0, verbose=0)
    return {"keras": train_summary["best"], "tflite": str(root / "int8" / "model.tflite"),
            "train": train_summary, "int8": int8_summary}


def write_folder(root, digits, classes, per_class=3, fmt="png"):
    """Digits test images as files, one folder per class name: ``{folder: digit}``."""
    x_test, y_test = digits.split("test")
    chosen = {}
    for folder, digit in classes.items():
        images = x_test[y_test == digit][:per_class]
        os.makedirs(root / folder, exist_ok=True)
        for i, image in enumerate(images):
            encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image)
            (root / folder / f"{i}.{fmt}").write_bytes(encoded.numpy())
        chosen[folder] = images
    return chosen


def test_accuracy_report_counts_what_it_says():
    names = ["a", "b", "c", "d", "e", "f"]
    logits = np.array([[9, 8, 0, 0, 0, 0],   # a -> a
                       [8, 9, 0, 0, 0, 0],   # a -> b
                       [0, 9, 8, 0, 0, 0],   # c -> b (c second)
                       [0, 9, 0, 0, 0, 8],   # c -> b (c out of the top 5: 6th)
                       [0, 0, 9, 0, 0, 0]], float)  # c -> c
    logits[3, 2] = -1
    labels = np.array([0, 0, 2, 2, 2])
    report = accuracy_report(logits, labels, names)
    assert report["images"] == 5 and report["top1"] == pytest.approx(2 / 5)
    assert report["top5"] == pytest.approx(4 / 5)
    assert report["per_class"] == {"a": {"images": 2, "top1": 0.5},
                                   "c": {"images": 3, "top1": 0.3333}}
    # Rows: the classes with images; columns: those predicted (d, e, f: neither).
    assert report["confusion"]["rows"] == ["a", "c"]
    assert report["confusion"]["columns"] == ["a", "b", "c"]
    assert report["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 1]]
    assert report["confused_pairs"] == [
        {"true": "c", "predicted": "b", "images": 2, "share": 0.6667},
        {"true": "a", "predicted": "b", "images": 1, "share": 0.5}]
    with pytest.raises(ValueError, match="6 class names for model outputs of shape"):
        accuracy_report(logits[:, :5], labels, names)


def test_confusion_figure_of_some_species_has_their_rows_and_names(tmp_path):
    """36 of a model's 100 species in the data, 40 predicted: 36 rows, 40 columns, all
    named; past 60 a side, the most confused block."""
    from tinymoe.evaluation import confusion_block, plot_confusion

    names = [f"species {i}" for i in range(100)]
    labels = np.repeat(np.arange(36), 3)
    logits = np.zeros((len(labels), 100))
    logits[np.arange(len(labels)), labels] = 5.0  # right ...
    logits[np.arange(12), 36 + np.arange(12) % 4] = 9.0  # ... but species 0-3: 36-39
    report = accuracy_report(logits, labels, names)
    rows, columns, shares, note = confusion_block(report["confusion"])
    assert rows == names[:36] and columns == names[4:40] and note == ""
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    path = plot_confusion(report["confusion"], str(tmp_path / "c.png"))
    assert open(path, "rb").read(8) == PNG_SIGNATURE
    # 80 species, each confused with the next, and one pair confused far more often.
    big = np.zeros((80, 80), int)
    for i in range(80):
        big[i, i], big[i, (i + 1) % 80] = 5, 1
    big[7, 50] = 30
    wide = {"rows": names[:80], "columns": names[:80], "matrix": big.tolist()}
    rows, columns, shares, note = confusion_block(wide, limit=60)
    assert len(rows) == len(columns) == 60 and "60 of 80 true classes" in note
    assert {"species 7", "species 50"} <= set(rows) & set(columns)


def test_evaluate_keras_on_digits_writes_figure_and_matches_training(trained, tmp_path,
                                                                     capsys):
    assert main(["evaluate", trained["keras"], "--split", "val", "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["top1"] == trained["train"]["val_accuracy"]  # the same code path
    assert result["top1"] > 0.85 and result["top5"] >= result["top1"]
    assert f"top-1 {result['top1']:.4f}" in out and "most confused" in out
    assert result["images"] == 269 and len(result["per_class"]) == 10
    matrix = np.array(result["confusion"]["matrix"])
    assert matrix.sum() == 269 and np.trace(matrix) == round(result["top1"] * 269)
    counts = [pair["images"] for pair in result["confused_pairs"]]
    assert counts == sorted(counts, reverse=True) and len(counts) <= 10
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG_SIGNATURE
    default = evaluate_run(trained["keras"], "digits", progress=False)
    assert default["split"] == "test" and default["images"] == 271


def test_evaluate_int8_top1_equals_what_optimize_reported(trained, capsys):
    assert main(["evaluate", trained["tflite"], "--data", "digits", "--split", "val",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "int8, TFLite Micro"
    assert result["top1"] == trained["int8"]["int8_tflm_top1"]
    assert result["top1"] > 0.85


def test_evaluate_scores_a_folder_of_some_classes_by_name(trained, digits, tmp_path):
    """Folders '3', '7' and '9' only: scored against the model's ten classes, by name."""
    chosen = write_folder(tmp_path / "field", digits, {"7": 7, "3": 3, "9": 9})
    (tmp_path / "field" / "9" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for kind in ("keras", "tflite"):
        classifier = load_classifier(trained[kind])
        with pytest.warns(UserWarning, match="Skipped 1 unreadable image") as record:
            result = evaluate_run(classifier, str(tmp_path / "field"), progress=False)
        message = [str(w.message) for w in record if "unreadable" in str(w.message)]
        assert message == [f"Skipped 1 unreadable image(s) of 10:\n  "
                           f"{tmp_path / 'field' / '9' / 'broken.png'}: {UNREADABLE}"]
        assert result["split"] == "all" and result["images"] == 9  # no split file: all
        assert sorted(result["per_class"]) == ["3", "7", "9"]
        hits = sum(int(np.sum(np.argmax(classifier.logits(images), 1) == int(name)))
                   for name, images in chosen.items())
        assert result["top1"] == pytest.approx(hits / 9)


def test_evaluate_refuses_classes_the_model_does_not_know(trained, digits, tmp_path, capsys):
    write_folder(tmp_path / "field", digits, {"3": 3, "owl": 4, "heron": 5}, per_class=1)
    for kind in ("keras", "tflite"):
        assert main(["evaluate", trained[kind], "--data", str(tmp_path / "field")]) == 2
        assert "does not know the class(es) 'heron', 'owl'" in capsys.readouterr().err
    assert main(["evaluate", trained["keras"], "--input-size", "64"]) == 2
    assert "takes 32x32 images, not 64x64" in capsys.readouterr().err
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert main(["evaluate", trained["keras"], "--labels", str(tmp_path / "three.txt")]) == 2
    assert "names 3 classes, but the model" in capsys.readouterr().err


def test_predict_keras_and_tflite_list_top_k_and_skip_unreadable_files(trained, digits,
                                                                      tmp_path, capsys):
    chosen = write_folder(tmp_path / "photos", digits, {"a": 1, "b": 2}, per_class=2,
                          fmt="jpg")
    single = tmp_path / "single.png"
    single.write_bytes(tf.io.encode_png(chosen["a"][0]).numpy())
    broken = tmp_path / "photos" / "b" / "cut.jpg"
    broken.write_bytes((tmp_path / "photos" / "b" / "0.jpg").read_bytes()[:100])
    for kind in ("keras", "tflite"):
        csv_path = tmp_path / f"{kind}.csv"
        status = main(["predict", trained[kind], str(tmp_path / "photos"), str(single),
                       "--top", "3", "--csv", str(csv_path)])
        captured = capsys.readouterr()
        assert status == 0
        assert f"tinymoe predict: warning: Skipped 1 unreadable image(s) of 6:" in captured.err
        assert f"{broken}: {UNREADABLE}" in captured.err
        assert "function_node" not in captured.err
        assert f"skipped 1 unreadable file(s): {broken}" in captured.out
        rows = list(csv.DictReader(csv_path.open()))
        assert [row["path"] for row in rows] == sorted(
            str(p) for p in (tmp_path / "photos").rglob("[0-9].jpg")) + [str(single)]
        classifier = load_classifier(trained[kind])
        for row in rows:  # the top label is the model's argmax for that file
            image = read_image(row["path"], 32)
            assert row["label_1"] == str(int(np.argmax(classifier.logits(image[None]))))
            scores = [float(row[f"score_{k}"]) for k in (1, 2, 3)]
            assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-3
    result = predict_run(trained["tflite"], [str(single)], top=50, progress=False)
    assert len(result["predictions"][0]["labels"]) == 10  # --top beyond the classes: all
    assert result["skipped"] == []


def test_predict_reports_bad_input(trained, tmp_path, capsys):
    assert main(["predict", trained["keras"], str(tmp_path / "missing.jpg")]) == 2
    assert "is neither an image file nor a folder" in capsys.readouterr().err
    assert main(["predict", trained["keras"], str(tmp_path), "--top", "0"]) == 2
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    assert main(["predict", trained["keras"], str(tmp_path)]) == 1  # nothing readable
    captured = capsys.readouterr()
    assert f"{tmp_path / 'junk.jpg'}: {UNREADABLE}" in captured.err


def test_keras_and_tflite_logits_keep_the_image_order(trained, digits):
    """Chunked TFLM runs and batched Keras runs give one row per image, in order."""
    x_val = digits.split("val")[0][:70]
    model = load_classifier(trained["keras"]).model
    np.testing.assert_allclose(keras_logits(model, x_val, batch_size=16),
                               keras_logits(model, x_val, batch_size=70), rtol=1e-4, atol=1e-4)
    tflite_bytes = open(trained["tflite"], "rb").read()
    chunked = tflite_logits(tflite_bytes, x_val)  # 64 + 6
    np.testing.assert_array_equal(chunked[64:], tflite_logits(tflite_bytes, x_val[64:]))
