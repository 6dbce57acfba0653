"""The CNNs TinyML users start from, as models of the zoo: Keras Applications' MobileNetV2 and
MobileNetV3-Small, with their ImageNet weights.

Edge Impulse's and Teachable Machine's image projects start from Keras' MobileNetV2 alpha
0.35 with its ImageNet weights; it is the model tinymoe's own are measured against, and a
teacher for them. Built here for any number of classes and input size, taking pixels in
[0, 255] like every tinymoe model (so that the int8 input on the device is the raw pixel
minus 128): a rescaling to the network's [-1, 1], the Keras Applications backbone (its
layers inline, so that tfmot's quantisation-aware training sees each one), global average
pooling, dropout and a new ``classifier``.

Started from ImageNet weights, the backbone's batch-norm statistics stay as ImageNet left
them (its batch norms are not trainable: on a few thousand images their running averages
would only drift); from random weights they train, with momentum 0.99 (Keras' 0.999 leaves a
model trained on a small data set at chance, ``../shared/docs/STACK.md``).
"""

import dataclasses
import os
from typing import NamedTuple

from tinymoe.backend import keras

FAMILIES = ("mobilenet_v2", "mobilenet_v3_small")
WEIGHTS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


class _WeightsFile(NamedTuple):
    """Where Keras Applications keeps one backbone's ImageNet weights: its file name in the
    Keras cache, the address it downloads it from, and the SHA-256 where it is known."""

    file: str
    origin: str
    sha256: str = None


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """A Keras Applications CNN of the zoo.

    Args:
        family: "mobilenet_v2" or "mobilenet_v3_small" (minimalistic: ReLU, no
            squeeze-excite, no hard-swish, as TinyML deployments use it).
        alpha: width multiplier.
        dropout: dropout before the classifier.
        bn_momentum: momentum of the batch norms when they train (from random weights).

    Example:
        >>> CNNConfig("mobilenet_v2", alpha=0.35)
    """

    family: str
    alpha: float
    dropout: float = 0.2
    bn_momentum: float = 0.99

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}.")

    def imagenet_file(self):
        """The :class:`_WeightsFile` of this backbone's ImageNet weights, or None."""
        if self.family == "mobilenet_v2":
            if self.alpha not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
                return None
            file = (f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(self.alpha)}_224"
                    f"_no_top.h5")
            return _WeightsFile(file, WEIGHTS_BASE + "mobilenet_v2/" + file,
                               MOBILENET_V2_035_SHA256 if self.alpha == 0.35 else None)
        if self.alpha not in (0.75, 1.0):
            return None
        file = f"weights_mobilenet_v3_small_minimalistic_{float(self.alpha)}_224_tf_no_top.h5"
        return _WeightsFile(file, WEIGHTS_BASE + "mobilenet_v3/" + file)


# The file Keras downloads for MobileNetV2-0.35, as rebuilt from Teachable Machine exports
# (benchmarks/imagenet_weights.py; ../shared/docs/TEACHERS.md).
MOBILENET_V2_035_SHA256 = "4f641a2c3b6a45d6515f988288efabe62e3e3adeefb9790a5a1b86f95224da12"
REBUILD_HINT = ("Without the internet, benchmarks/imagenet_weights.py rebuilds "
                "MobileNetV2-0.35's file from a public Teachable Machine export.")


def keras_weights_path(file):
    """Where Keras Applications keeps a downloaded weights file (``$KERAS_HOME/models`` or
    ``~/.keras/models``).

    Example:
        >>> keras_weights_path("x.h5").endswith(os.path.join("models", "x.h5"))
        True
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", file)


def imagenet_weights(config, name):
    """The path of ``config``'s ImageNet weights, downloaded by Keras where missing.

    Raises:
        ValueError: the backbone has no ImageNet weights, or they are not on this machine
            and cannot be downloaded (naming the file, where it comes from and how to
            rebuild it offline), or the file's SHA-256 is not the published one.

    Example:
        >>> imagenet_weights(CNNConfig("mobilenet_v2", 0.35), "mobilenet_v2_035")
        '/root/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5'
    """
    from tinymoe.weights import file_sha256

    wanted = config.imagenet_file()
    if wanted is None:
        raise ValueError(f"Model {name!r} has no ImageNet weights in Keras Applications "
                         f"(MobileNetV2 alphas 0.35, 0.5, 0.75, 1.0, 1.3, 1.4; MobileNetV3-"
                         f"Small 0.75 and 1.0). Use weights=None.")
    path = keras_weights_path(wanted.file)
    if not os.path.isfile(path):
        try:
            path = keras.utils.get_file(wanted.file, wanted.origin, cache_subdir="models")
        except Exception as error:  # no network: say where the file comes from
            raise ValueError(
                f"The ImageNet weights of {name!r} are not on this machine ({path}) and "
                f"could not be downloaded from {wanted.origin} "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                f"Put the file there, or set KERAS_HOME to a folder whose models/ holds it. "
                f"{REBUILD_HINT}") from None
    if wanted.sha256 and file_sha256(path) != wanted.sha256:
        raise ValueError(f"{path} has SHA-256 {file_sha256(path)}, not Keras' "
                         f"{wanted.sha256}: remove it and download or rebuild it.")
    return path


def check_cnn_weights(config, name, weights):
    """Refuses weights other than ``"imagenet"`` (or None) for a CNN of the zoo.

    Example:
        >>> check_cnn_weights(CNNConfig("mobilenet_v2", 0.35), "mobilenet_v2_035", "imagenet")
    """
    if weights not in (None, "imagenet"):
        raise ValueError(f"Model {name!r} takes weights=None or 'imagenet' (Keras "
                         f"Applications'), got {weights!r}.")
    if weights == "imagenet" and config.imagenet_file() is None:
        imagenet_weights(config, name)  # raises, naming the alphas that have them


def build_cnn(config, num_classes=1000, input_shape=(224, 224, 3), name=None, weights=None):
    """Builds a Keras Applications CNN classifier as a flat functional model.

    Args:
        config: a :class:`CNNConfig`.
        num_classes: classes of the new classifier.
        input_shape: (height, width, 3), at least 32x32.
        name: model name.
        weights: None (random) or "imagenet" (Keras Applications' backbone weights; the
            batch norms then keep ImageNet's statistics).

    Example:
        >>> model = build_cnn(CNNConfig("mobilenet_v2", 0.35), 100, (128, 128, 3))
        >>> model.output_shape
        (None, 100)
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 32:
        raise ValueError(f"{name or config.family} takes (height, width, 3) images of at "
                         f"least 32x32, got input_shape {input_shape}.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    check_cnn_weights(config, name, weights)
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    kwargs = {"input_tensor": x, "alpha": config.alpha, "include_top": False, "weights": None}
    if config.family == "mobilenet_v2":
        backbone = keras.applications.MobileNetV2(**kwargs)
    else:
        backbone = keras.applications.MobileNetV3Small(
            minimalistic=True, include_preprocessing=False, **kwargs)
    if weights == "imagenet":
        backbone.load_weights(imagenet_weights(config, name))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
            layer.trainable = weights is None
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(int(num_classes), name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or f"{config.family}_{config.alpha}")
