import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tinymoe  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tensorflow is imported)
from tinymoe.backend import keras, tf  # noqa: E402

# Deterministic kernels and tf.data order: a rerun on the same machine reproduces a failure
# bit for bit. Not a correctness crutch: across CPUs (oneDNN picks kernels per instruction
# set) and with TF_ENABLE_ONEDNN_OPTS=0 or 1 the float path still differs, and every test
# asserts a property that holds on any of them. Ops without a deterministic kernel would
# raise here; none of the suite's does on CPU. The one thing that does raise is an unseeded
# tf.random.Generator: keras-cv's augmentation layers take seed=0 for "no seed" and use the
# global generator, which determinism requires to be set first (the seeded fixture does).
tf.config.experimental.enable_op_determinism()


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same seeds."""
    random.seed(0)
    np.random.seed(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    tf.random.set_global_generator(tf.random.Generator.from_seed(0))
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
