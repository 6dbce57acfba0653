"""Distillation: a frozen teacher pulls the student toward its outputs; teachers whose
classes are not the data's are refused; a head is fitted on a network's features."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.augment import make_dataset
from tinymoe.backend import keras, tf
from tinymoe.data import ImageData, write_labels
from tinymoe.distill import Distillation, Teacher, fit_linear_head, load_teacher
from tinymoe.train import TrainConfig, fit

SIZE, CLASSES = 8, 3


def small_net(num_outputs, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.layers.Input((SIZE, SIZE, 3)),
                             keras.layers.Rescaling(1 / 255.0),
                             keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(num_outputs)])


def image_data(num_images=36, num_classes=CLASSES):
    images, labels = synthetic_images(num_images, SIZE, num_classes)
    splits = np.array(["train", "val", "test"] * (num_images // 3))
    return ImageData(images.astype(np.uint8), labels, splits,
                     [f"class{i}" for i in range(num_classes)], np.full(num_images, ""))


def mean_kl(teacher_logits, student_logits):
    p = tf.nn.softmax(teacher_logits)
    return float(tf.reduce_mean(tf.reduce_sum(
        p * (tf.math.log(p + 1e-12) - tf.nn.log_softmax(student_logits)), -1)))


def test_the_teacher_term_alone_pulls_the_student_to_the_teachers_outputs():
    images, _ = synthetic_images(24, SIZE, CLASSES)
    # Labels that disagree with the teacher: trained on them, a student moves away from it.
    teacher_net = small_net(CLASSES, seed=1)
    teacher_logits = teacher_net(images).numpy() * 4.0  # a confident teacher
    teacher = Teacher(keras.Sequential([teacher_net, keras.layers.Rescaling(4.0)]), SIZE,
                      num_outputs=CLASSES)
    labels = (np.argmax(teacher_logits, 1) + 1) % CLASSES
    train = make_dataset(images, labels, CLASSES, batch_size=8)
    config = TrainConfig(epochs=15, learning_rate=1e-2, warmup_epochs=0, weight_decay=0.0,
                         label_smoothing=0.0)
    students = {}
    for name, distillation in (("without", None),
                               ("taught", Distillation(teacher, alpha=1.0, temperature=1.0))):
        student = small_net(CLASSES, seed=2)  # the same start for both
        start = mean_kl(teacher_logits, student(images))
        fit(student, train, None, config, verbose=0, distillation=distillation)
        students[name] = mean_kl(teacher_logits, student(images))
    # Same initial weights, same batches: only the loss differs. The taught student ends
    # nearer the teacher than it started, and than the one trained on the labels alone
    # (whose labels contradict the teacher). Margins of 2x: the KL moves by far more than
    # float rounding between CPUs (a few ulps per step).
    assert students["taught"] < 0.5 * start
    assert students["taught"] < 0.5 * students["without"]


def test_a_distilled_fit_logs_the_teacher_term_and_saves_the_student_alone(tmp_path):
    images, labels = synthetic_images(16, SIZE, CLASSES)
    teacher = Teacher(small_net(CLASSES, seed=1), SIZE, num_outputs=CLASSES)
    train = make_dataset(images, labels, CLASSES, batch_size=8)
    student = small_net(CLASSES, seed=2)
    history = fit(student, train, None, TrainConfig(epochs=1, warmup_epochs=0),
                  out_dir=str(tmp_path), verbose=0,
                  distillation=Distillation(teacher, alpha=0.5, temperature=2.0))
    assert history.history["distill_loss"][0] > 0
    saved = keras.models.load_model(tmp_path / "best.keras", compile=False)
    assert len(saved.layers) == len(student.layers)  # no teacher inside


def test_a_teacher_with_other_classes_is_refused(tmp_path):
    data = image_data()
    wrong = small_net(CLASSES + 1, seed=0)
    wrong.save(tmp_path / "wrong.keras")
    with pytest.raises(ValueError, match=r"has 4 classes but the data has 3"):
        load_teacher(str(tmp_path / "wrong.keras"), data)
    folder = tmp_path / "other"
    folder.mkdir()
    small_net(CLASSES, seed=0).save(folder / "model.keras")
    write_labels(str(folder / "labels.txt"), ["wren", "robin", "class2"])
    with pytest.raises(ValueError, match=r"other classes than the data's \(2 differ"):
        load_teacher(str(folder / "model.keras"), data)
    right = tmp_path / "right"
    right.mkdir()
    small_net(CLASSES, seed=0).save(right / "model.keras")
    write_labels(str(right / "labels.txt"), data.class_names)
    assert load_teacher(str(right / "model.keras"), data).num_classes == CLASSES


def test_bad_distillation_settings_are_refused():
    teacher = Teacher(small_net(CLASSES, seed=0), SIZE, num_outputs=CLASSES)
    with pytest.raises(ValueError, match="alpha"):
        Distillation(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(teacher, temperature=0.0)
    with pytest.raises(ValueError, match="neither a .keras or .tflite file"):
        load_teacher("no_such_teacher", image_data())


def test_a_head_is_fitted_on_separable_features_and_chosen_on_val():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 6))
    labels = np.arange(80) % 4
    features = centres[labels] + rng.normal(0, 0.5, (80, 6))
    head = fit_linear_head(features[:60], labels[:60], features[60:], labels[60:], 4)
    logits = features[60:] @ head.kernel + head.bias
    assert head.val_top1 == 1.0 and np.all(np.argmax(logits, 1) == labels[60:])
    assert head.c in (0.01, 0.03, 0.1, 0.3, 1.0)


def test_a_tflite_network_becomes_a_teacher_through_a_fitted_head(tmp_path):
    data = image_data(num_images=60)
    features = keras.Sequential([keras.layers.Input((SIZE, SIZE, 3)),
                                 keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                                 keras.layers.Dense(12, name="features"),
                                 keras.layers.Dense(5, name="logits")])
    converter = tf.lite.TFLiteConverter.from_keras_model(features)
    path = tmp_path / "net.tflite"
    path.write_bytes(converter.convert())
    teacher = load_teacher(str(path), data, progress=False)
    # The default feature tensor is the input of the last dense layer: 12 features, not 5.
    assert teacher.head.kernel.shape == (12, CLASSES)
    x_val, y_val = data.split("val")
    logits = teacher.predict(x_val)
    assert logits.shape == (len(x_val), CLASSES)
    # The bands are separable: the head recovers them far above chance (1/3).
    assert np.mean(np.argmax(logits, 1) == y_val) >= 0.8
    assert teacher.describe()["teacher_head_val_top1"] >= 0.8
    distillation = Distillation(teacher)
    assert dataclasses.asdict(distillation)["alpha"] == 0.9  # the default chosen on val


def test_train_and_optimize_take_a_teacher_on_the_command_line(tmp_path, monkeypatch):
    from tinymoe.cli import main

    size = 32
    images, labels = synthetic_images(24, size, CLASSES)
    data = ImageData(images.astype(np.uint8), labels,
                     np.array(["train"] * 16 + ["val"] * 8), ["a", "b", "c"], np.full(24, ""))
    monkeypatch.setattr("tinymoe.data.load_dataset", lambda source, size: data)

    def conv_net(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))

    conv_net(1).save(tmp_path / "teacher.keras")
    conv_net(2).save(tmp_path / "student.keras")
    teacher = ["--teacher", str(tmp_path / "teacher.keras"), "--teacher-weight", "0.8",
               "--temperature", "2"]
    assert main(["train", "--model", str(tmp_path / "student.keras"), "--input-size",
                 str(size), "--epochs", "1", "--batch-size", "8", "--out",
                 str(tmp_path / "run"), "--mixup", "0.2", *teacher]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["augment"]["mixup_alpha"] == 0.2 and summary["augment"]["crop"]
    assert summary["distillation"]["alpha"] == 0.8
    assert summary["distillation"]["temperature"] == 2.0
    assert summary["distillation"]["teacher"].endswith("teacher.keras")
    assert main(["optimize", str(tmp_path / "run" / "best.keras"), "--input-size", str(size),
                 "--qat-epochs", "1", "--out", str(tmp_path / "opt"), *teacher]) == 0
    optimized = json.loads((tmp_path / "opt" / "summary.json").read_text())
    assert optimized["qat_epochs"] == 1 and optimized["distillation"]["alpha"] == 0.8
    assert (tmp_path / "opt" / "model.tflite").stat().st_size > 0
    # A teacher of other classes stops the command before any training, with exit status 2.
    small_net(CLASSES + 1, seed=0).save(tmp_path / "wrong.keras")
    assert main(["train", "--model", str(tmp_path / "student.keras"), "--input-size",
                 str(size), "--out", str(tmp_path / "refused"), "--teacher",
                 str(tmp_path / "wrong.keras")]) == 2
    assert not (tmp_path / "refused").exists()
