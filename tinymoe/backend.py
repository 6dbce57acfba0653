"""The one place where tinymoe imports Keras.

tinymoe uses the Keras 2 API (``tf_keras``): tensorflow-model-optimization (pruning,
quantisation-aware training) works only with it, and keras-cv follows it when
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported. Every other module
imports ``keras`` and ``tf`` from here.
"""

import os
import sys

_LEGACY = "TF_USE_LEGACY_KERAS"


def _keras_3_already_bound():
    """True when TensorFlow was imported before us and ``tf.keras`` already resolved to Keras 3."""
    if "tensorflow" not in sys.modules:
        return False
    tf_module = sys.modules["tensorflow"]
    try:
        name = tf_module.keras.__name__
    except Exception:  # a half-imported tensorflow: let the import below report it
        return False
    return not name.startswith("tf_keras")


os.environ[_LEGACY] = "1"
if _keras_3_already_bound():
    raise ImportError(
        "tinymoe needs the Keras 2 API (tf_keras), but TensorFlow was imported first with Keras 3 "
        "behind `tf.keras`. Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow "
        "is imported (or import tinymoe first), then restart the Python process or notebook kernel."
    )

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf", "register"]


def register(cls):
    """Registers a layer for Keras serialisation under the ``tinymoe`` package.

    Example:
        >>> @register
        ... class MyLayer(keras.layers.Layer):
        ...     pass
    """
    return keras.saving.register_keras_serializable(package="tinymoe")(cls)
