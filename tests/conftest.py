import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tinymoe  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tensorflow is imported)
from tinymoe.backend import keras, tf  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same seeds."""
    random.seed(0)
    np.random.seed(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    yield


def synthetic_images(num_images, size, num_classes, seed=0):
    """A small learnable image set: each class brightens its own horizontal band.

    Returns (images [N, size, size, 3] float32 in [0, 255], labels [N] int32).
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_images) % num_classes).astype(np.int32)
    rng.shuffle(labels)
    images = rng.uniform(0, 80, (num_images, size, size, 3)).astype(np.float32)
    band = size // num_classes
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band, :, label % 3] += 170
    return images, labels
