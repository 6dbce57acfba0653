"""MobileViTv2 on an ImageNet MobileNetV2 trunk: the early stages taken whole, with their
ImageNet weights, from the CNN TinyML users start from.

MobileViTv2's early stages are MobileNetV2 inverted residual blocks; ours, trained on Tiny
ImageNet's 100,000 64x64 images, know far less than Keras' MobileNetV2 trained on ImageNet's
1.28 M 224x224 ones. Here the stem and the blocks of Keras Applications' MobileNetV2 up to a
chosen layer (``trunk_end``, e.g. ``"block_12_add"``: stride 16) are that network itself
(ImageNet weights with ``weights="imagenet"``, batch-norm statistics kept), and the stages
after it are tinymoe's: inverted residual blocks and MobileViTv2 blocks (separable attention,
ReLU6, a fast layer norm before each attention, folded batch norms before the feed-forwards:
:data:`tinymoe.models.MCU_SPEED_LAYOUT`'s choices), then pooling and a new classifier. The
model takes pixels in [0, 255] like every tinymoe model.
"""

import dataclasses
from typing import Tuple

from tinymoe.backend import keras
from tinymoe.layers import InvertedResidual, MobileViTV2Block
from tinymoe.models.cnn import CNNConfig, check_cnn_weights, imagenet_weights


@dataclasses.dataclass(frozen=True)
class HybridConfig:
    """An ImageNet MobileNetV2 trunk and tinymoe stages after it.

    Args:
        trunk_alpha: width of the Keras MobileNetV2 trunk.
        trunk_end: the trunk's last layer (a Keras MobileNetV2 layer name).
        stages: :class:`tinymoe.models.StageConfig` after the trunk (``attn_dim`` set: a
            MobileViTv2 block after the stage's inverted residuals).
        block_activation: activation of the MobileViTv2 blocks.
        norm: their normalisation ("mixed": a fast layer norm before each attention, a
            folded batch norm before each feed-forward).
        ffn_multiplier: feed-forward width as a multiple of the attention width.
        dropout: dropout before the classifier.
        bn_momentum: momentum of the batch norms that train.

    Example:
        >>> HybridConfig(stages=(StageConfig(160, stride=2, activation="relu6",
        ...                                  attn_dim=96, attn_layers=2),))
    """

    stages: Tuple = ()
    trunk_alpha: float = 0.35
    trunk_end: str = "block_12_add"
    block_activation: str = "relu6"
    norm: str = "mixed"
    ffn_multiplier: float = 2.0
    dropout: float = 0.1
    bn_momentum: float = 0.99

    def trunk(self):
        """The trunk as a :class:`tinymoe.models.CNNConfig` (for its ImageNet weights)."""
        return CNNConfig("mobilenet_v2", self.trunk_alpha, bn_momentum=self.bn_momentum)


def build_hybrid(config, num_classes=1000, input_shape=(224, 224, 3), name=None, weights=None):
    """Builds a :class:`HybridConfig` model as a flat functional Keras model.

    Args:
        config: a :class:`HybridConfig`.
        num_classes: classes of the new classifier.
        input_shape: (height, width, 3), sides multiples of 32.
        name: model name.
        weights: None or "imagenet" (the trunk's; its batch norms then keep ImageNet's
            statistics).

    Example:
        >>> model = build_hybrid(get_config("mobilevit_v2_mnv2"), 100, (128, 128, 3))
    """
    from tinymoe.models.mobilevit_v2 import check_input_shape

    shape = check_input_shape(input_shape)
    trunk = config.trunk()
    check_cnn_weights(trunk, name, weights)
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    backbone = keras.applications.MobileNetV2(input_tensor=x, alpha=config.trunk_alpha,
                                              include_top=False, weights=None)
    if weights == "imagenet":
        backbone.load_weights(imagenet_weights(trunk, name))
    names = [layer.name for layer in backbone.layers]
    if config.trunk_end not in names:
        raise ValueError(f"trunk_end {config.trunk_end!r} is not a layer of Keras' "
                         f"MobileNetV2 (e.g. block_5_add, block_12_add, block_16_project_BN).")
    for layer in backbone.layers[:names.index(config.trunk_end) + 1]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
            layer.trainable = weights is None
    x = backbone.get_layer(config.trunk_end).output
    for number, stage in enumerate(config.stages, start=1):
        for block in range(stage.blocks):
            x = InvertedResidual(stage.channels, stage.stride if block == 0 else 1,
                                 stage.expand_ratio, activation=stage.activation,
                                 bn_momentum=config.bn_momentum,
                                 name=f"head{number}_mv2_{block}")(x)
        if stage.attn_dim is not None:
            ffn_dim = int(config.ffn_multiplier * stage.attn_dim) // 16 * 16
            x = MobileViTV2Block(stage.attn_dim, ffn_dim, stage.attn_layers,
                                 activation=config.block_activation,
                                 bn_momentum=config.bn_momentum, norm=config.norm,
                                 name=f"head{number}_mvit")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(int(num_classes), name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or "mobilevit_v2_hybrid")
