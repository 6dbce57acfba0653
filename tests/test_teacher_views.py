"""Stored teacher views: the schedule's views drawn once, the teacher's logits computed once,
and students trained on exactly those views and logits."""

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.data import ImageData
from tinymoe.distill import Distillation, Teacher, load_teacher
from tinymoe.pipeline import train_run
from tinymoe.teacher_views import (compute_teacher_logits, draw_views, load_views, render,
                                   save_views, views_dataset)
from tinymoe.train import TrainConfig

SIZE, CLASSES = 16, 3


def net(seed, outputs=CLASSES):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.layers.Input((SIZE, SIZE, 3)),
                             keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                             keras.layers.Dense(outputs)])


def test_views_follow_the_crop_distribution_and_every_epoch_shows_every_image_once():
    views = draw_views(50, epochs=3, seed=0, crop_area=(0.5, 1.0), mixup_alpha=0.2)
    for epoch in range(3):
        assert sorted(views.order[epoch]) == list(range(50))
    top, left, bottom, right = np.moveaxis(views.boxes, -1, 0)
    area = (bottom - top) * (right - left)
    # Height and width are clipped to the image, so the area can fall a little under 0.5.
    assert np.all((0 <= top) & (top < bottom) & (bottom <= 1.0 + 1e-6)) and np.all(left >= 0)
    assert 0.4 < area.min() and area.max() <= 1.0 + 1e-6
    assert 0.3 < views.flips.mean() < 0.7
    assert np.all((views.lambdas >= 0) & (views.lambdas <= 1)) and views.lambdas.std() > 0.1
    plain = draw_views(50, epochs=1, seed=0)
    assert np.all(plain.lambdas == 1.0)


def test_batches_are_the_stored_views_with_their_logits_and_mixed_labels(tmp_path):
    images, labels = synthetic_images(10, SIZE, CLASSES)
    teacher = Teacher(net(1), SIZE, num_outputs=CLASSES)
    views = compute_teacher_logits(teacher, images, draw_views(10, 2, mixup_alpha=0.4),
                                   batch_size=4, progress=False)
    save_views(views, str(tmp_path / "views.npz"))
    views = load_views(str(tmp_path / "views.npz"))
    batches = list(views_dataset(views, images, labels, CLASSES, batch_size=4))
    assert len(batches) == 2 * 3  # two epochs of ceil(10 / 4) batches, in epoch order
    (x, stored), y = batches[4]  # epoch 1, positions 4-7
    again, index, partner, weight = render(images, views, 1, np.arange(4, 8), SIZE)
    np.testing.assert_array_equal(x.numpy(), again.numpy())
    np.testing.assert_allclose(stored.numpy(), views.logits[1, 4:8].astype(np.float32))
    # The logits are the teacher's on these very images (stored as float16).
    np.testing.assert_allclose(stored.numpy(), teacher.logits(x).numpy(), atol=2e-2, rtol=1e-2)
    want = (weight.numpy()[:, None] * np.eye(CLASSES)[labels[index.numpy()]]
            + (1 - weight.numpy()[:, None]) * np.eye(CLASSES)[labels[partner.numpy()]])
    np.testing.assert_allclose(y.numpy(), want, atol=1e-6)


def test_a_student_trains_on_stored_views_through_train_run(tmp_path):
    images, labels = synthetic_images(24, SIZE, CLASSES)
    splits = np.array(["train"] * 18 + ["val"] * 6)
    data = ImageData(images.astype(np.uint8), labels, splits,
                     [f"c{i}" for i in range(CLASSES)], np.full(24, ""))
    x_train, _ = data.split("train")
    teacher = Teacher(net(1), SIZE, num_outputs=CLASSES)
    views = compute_teacher_logits(teacher, x_train, draw_views(18, 2), progress=False)
    path = str(tmp_path / "views.npz")
    save_views(views, path)
    stored = load_teacher(path, data)
    _, summary = train_run(net(2), data, str(tmp_path / "run"),
                           TrainConfig(epochs=2, batch_size=6, warmup_epochs=0), verbose=0,
                           distillation=Distillation(stored, alpha=0.7))
    assert summary["distillation"]["alpha"] == 0.7
    assert summary["distillation"]["teacher_views"]["epochs"] == 2
    with pytest.raises(ValueError, match="cover 2 epochs"):
        train_run(net(2), data, str(tmp_path / "long"), TrainConfig(epochs=3, batch_size=6),
                  verbose=0, distillation=Distillation(stored))
    other = ImageData(images[:12].astype(np.uint8), labels[:12], splits[:12],
                      data.class_names, np.full(12, ""))
    with pytest.raises(ValueError, match="for 18 training images"):
        load_teacher(path, other)
