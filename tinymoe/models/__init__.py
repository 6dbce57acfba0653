"""The model registry: ``create_model(name, ...)`` and ``list_models()``."""

import dataclasses
import difflib

from tinymoe.models.mobilevit_v2 import (
    MobileViTV2Config, MoEConfig, StageConfig, build_mobilevit_v2, check_input_shape)
from tinymoe.models.batch_norms import settle_batch_norms
from tinymoe.models.cnn import CNNConfig, build_cnn, check_cnn_weights
from tinymoe.models.hybrid import HybridConfig, build_hybrid
from tinymoe.models.dispatch import has_experts, moe_layers, with_dispatch
from tinymoe.models.tracing import read_routing, trace

_REGISTRY = {}


def register_model(name, config):
    """Adds a named variant (a :class:`MobileViTV2Config`, or a :class:`CNNConfig` for a
    Keras Applications CNN) to the registry.

    Example:
        >>> register_model("mobilevit_v2_moe8_050", MobileViTV2Config(
        ...     width=0.5, moe=MoEConfig(num_experts=8)))
    """
    if name in _REGISTRY:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = config
    return config


def list_models():
    """Names of the registered model variants, sorted.

    Example:
        >>> "mobilevit_v2_moe_050" in list_models()
        True
    """
    return sorted(_REGISTRY)


def get_config(name):
    """The :class:`MobileViTV2Config` (or :class:`CNNConfig`) registered as ``name``.

    Example:
        >>> get_config("mobilevit_v2_moe_050").moe.num_experts
        4
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Registered: {', '.join(list_models())}.")
    return _REGISTRY[name]


def create_model(name, num_classes=1000, input_shape=(256, 256, 3), weights=None,
                 **overrides):
    """Builds a registered model, from random weights or pretrained ones.

    Args:
        name: a name from :func:`list_models`.
        num_classes: int, number of classes.
        input_shape: (height, width, channels), height and width multiples of 32.
        weights: None (random initialisation) or the name of weights shipped with tinymoe
            (``"tinyimagenet"``: pretrained on Tiny ImageNet-200; see
            :func:`tinymoe.weights.available_weights` and the card,
            :func:`tinymoe.weights.weights_card`); for the Keras Applications CNNs
            (``mobilenet_v2_035``, ...) ``"imagenet"`` (Keras' file, see
            :mod:`tinymoe.models.cnn`). Every layer but the classifier is loaded; the
            classifier is new, for ``num_classes``.
        **overrides: fields of :class:`MobileViTV2Config` to change, e.g.
            ``moe=MoEConfig(num_experts=8)`` or ``dropout=0.0`` (with ``weights``, only
            those that leave the weights' shapes as they are).

    Raises:
        ValueError: an unknown model, weights the model does not have (naming those
            shipped), or an input the weights cannot take.

    Example:
        >>> model = create_model("mobilevit_v2_moe_050", num_classes=10, input_shape=(96, 96, 3))
        >>> model.output_shape
        (None, 10)
        >>> birds = create_model("mobilevit_v2_mcu", num_classes=100,
        ...                      input_shape=(128, 128, 3), weights="tinyimagenet")
    """
    config = get_config(name)
    if isinstance(config, (CNNConfig, HybridConfig)):
        if overrides:
            config = dataclasses.replace(config, **overrides)
        build = build_cnn if isinstance(config, CNNConfig) else build_hybrid
        return build(config, num_classes, input_shape, name=name, weights=weights)
    card = None
    if weights is not None:
        from tinymoe import weights as shipped

        card = shipped.weights_card(name, weights)  # refuses unknown weights first
        shipped.check_weights_input(card, input_shape)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    model = build_mobilevit_v2(config, num_classes, input_shape, name=name)
    if card is not None:
        shipped.load_weights(model, weights)
    return model


register_model("mobilevit_v2_050", MobileViTV2Config(width=0.5))
register_model("mobilevit_v2_075", MobileViTV2Config(width=0.75))
register_model("mobilevit_v2_100", MobileViTV2Config(width=1.0))
# The flagship: width 0.5, 4 experts (top-1, per-patch routing) in the last transformer layer
# of stages 4 and 5.
register_model("mobilevit_v2_moe_050", MobileViTV2Config(width=0.5, moe=MoEConfig()))

# The microcontroller flagship's first layout, designed from Cortex-M3 measurements at
# 128x128 (benchmarks/results/mcu_design_128px.md): no tensor at 64x64 beyond the stem (stage
# 1 is a stride-2 depthwise block without expansion), one stage-2 block, ReLU6 in every
# inverted residual (fused into the convolutions: no activation tensors), swish and layer
# norms in the attention stages. The MoE MCU model and its dense twin keep it.
MCU_LAYOUT = (
    StageConfig(24, blocks=1, stride=2, expand_ratio=1, activation="relu6"),
    StageConfig(32, blocks=1, stride=1, activation="relu6"),
    StageConfig(128, stride=2, activation="relu6", attn_dim=64, attn_layers=2),
    StageConfig(128, stride=2, activation="relu6", attn_dim=80, attn_layers=2),
    StageConfig(160, stride=2, activation="relu6", attn_dim=96, attn_layers=2),
)
_MCU_STEM = {"stem_channels": 16, "stem_activation": "relu6"}
# The microcontroller model, made cheap where a Cortex-M7 with CMSIS-NN spends its time
# (benchmarks/results/mcu_speed_128px.md): ReLU6 in the attention blocks too (swish's
# LOGISTIC and MUL took a quarter of the instructions), a batch norm folded into each
# feed-forward and a fast layer norm (no affine, means as convolutions) before each
# attention (the layer norms' MEAN, SUB, MUL and RSQRT took another quarter), and stage 3
# (16x16) with one transformer layer on 96 channels. 248 M -> 107 M instructions per
# 128x128 image, against 74 M for MobileNetV3-Small 0.7 at 160x160.
MCU_SPEED_LAYOUT = MCU_LAYOUT[:2] + (
    dataclasses.replace(MCU_LAYOUT[2], channels=96, attn_layers=1),) + MCU_LAYOUT[3:]
register_model("mobilevit_v2_mcu", MobileViTV2Config(
    layout=MCU_SPEED_LAYOUT, block_activation="relu6", norm="mixed", **_MCU_STEM))
# The MoE MCU model's dense twin: the first layout, swish and layer norms.
register_model("mobilevit_v2_mcu_layernorm", MobileViTV2Config(layout=MCU_LAYOUT,
                                                               **_MCU_STEM))
# The dense model at the MCU flagship's flash: its parameters spent on wider stages 4 and 5
# instead of experts (615,962 against 616,110 at 100 classes).
register_model("mobilevit_v2_mcu_wide", MobileViTV2Config(
    layout=MCU_LAYOUT[:3] + (
        StageConfig(144, stride=2, activation="relu6", attn_dim=88, attn_layers=2),
        StageConfig(176, stride=2, activation="relu6", attn_dim=104, attn_layers=2)),
    **_MCU_STEM))
register_model("mobilevit_v2_mcu_moe", MobileViTV2Config(
    layout=MCU_LAYOUT, moe=MoEConfig(layers=((4, -1),)), **_MCU_STEM))
# The same experts on the wider dense model: an 815 KB stripped .tflite at 100 classes.
register_model("mobilevit_v2_mcu_wide_moe", dataclasses.replace(
    get_config("mobilevit_v2_mcu_wide"), moe=MoEConfig(layers=((4, -1),))))

def check_input_size(model, size):
    """Refuses, before any data is read, a square input side that ``model`` cannot take.

    ``model`` is a registered name (MobileViTv2 models take multiples of 32, see
    :func:`check_input_shape`; Keras Applications' CNNs at least 32) or a ``.keras`` file
    (the side it was built for, read from the file's config without building the model).
    A name that is neither passes: the loader says what it is.

    Example:
        >>> check_input_size("mobilevit_v2_050", 100)  # ValueError: not a multiple of 32
    """
    size = int(size)
    if isinstance(model, str) and model.endswith(".keras"):
        shape = saved_input_shape(model)
        if shape is not None and None not in shape[:2] and tuple(shape[:2]) != (size, size):
            raise ValueError(f"{model} takes {shape[0]}x{shape[1]} images, not "
                             f"{size}x{size}.")
    elif model in _REGISTRY and isinstance(_REGISTRY[model], CNNConfig):
        if size < 32:  # as build_cnn requires
            raise ValueError(f"{model} takes images of at least 32x32, not {size}x{size}.")
    elif model in _REGISTRY:
        check_input_shape((size, size, 3))


def saved_input_shape(path):
    """``(height, width, channels)`` of the model in a ``.keras`` file, read from the file's
    config (nothing is built); None where the file does not say.

    Example:
        >>> saved_input_shape("runs/dense/best.keras")
        (128, 128, 3)
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    for layer in config.get("config", {}).get("layers", []):
        shape = layer.get("config", {}).get("batch_input_shape")
        if shape is not None:
            return tuple(shape[1:]) if len(shape) == 4 else None
    return None


def check_weights(name, weights, input_shape):
    """Refuses, before any data is read, ``weights`` that the registered model ``name`` does
    not have or that cannot take ``input_shape``.

    Example:
        >>> check_weights("mobilevit_v2_mcu", "tinyimagenet", (128, 128, 3))
    """
    config = get_config(name)
    if isinstance(config, (CNNConfig, HybridConfig)):
        trunk = config if isinstance(config, CNNConfig) else config.trunk()
        return check_cnn_weights(trunk, name, weights)
    from tinymoe.weights import check_weights_input, weights_card

    check_weights_input(weights_card(name, weights), input_shape)


# The microcontroller model with experts where it is short of capacity (Tiny ImageNet):
# 4 or 8 experts routed per image in the last transformer layer of stage 4 (one expert's
# MACs per image: the dense model's instructions, its spare flash spent on experts), trained
# as mixtures of experts from the start; and its flash-equal dense control, the same layer
# with one expert four times as wide (the 4-expert model's parameters, 4x that layer's MACs).
# All three keep a layer norm before that layer's feed-forward.
_PER_IMAGE = MoEConfig(layers=((4, -1),), routing="image", activation="relu6")
register_model("mobilevit_v2_mcu_moe4_image", dataclasses.replace(
    get_config("mobilevit_v2_mcu"), moe=_PER_IMAGE))
register_model("mobilevit_v2_mcu_moe8_image", dataclasses.replace(
    get_config("mobilevit_v2_mcu"), moe=dataclasses.replace(_PER_IMAGE, num_experts=8)))
register_model("mobilevit_v2_mcu_ffn4x", dataclasses.replace(
    get_config("mobilevit_v2_mcu"), moe=dataclasses.replace(
        _PER_IMAGE, num_experts=1, expert_hidden_dim=4 * 160, aux_loss_weight=0.0)))

# MobileViTv2 on the ImageNet MobileNetV2-0.35 trunk (tinymoe.models.hybrid): Keras'
# MobileNetV2-0.35 up to its stride-16 blocks (block_12_add, 8x8x32 at 128x128) with its
# ImageNet weights, then the MCU model's stage 5 (an inverted residual to 160 channels at
# stride 32 and a MobileViTv2 block of two layers, attention width 96). 82.8 M Cortex-M7
# instructions at 128x128 (the whole MobileNetV2-0.35: 89.2 M).
register_model("mobilevit_v2_mnv2_035", HybridConfig(stages=(MCU_LAYOUT[4],)))

# Keras Applications' CNNs: MobileNetV2 at every width with ImageNet weights (0.35 is Edge
# Impulse's and Teachable Machine's default image model), MobileNetV3-Small minimalistic.
for _alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
    register_model(f"mobilenet_v2_{round(_alpha * 100):03d}", CNNConfig("mobilenet_v2", _alpha))
for _alpha in (0.7, 0.75, 1.0):
    register_model(f"mobilenet_v3_small_{round(_alpha * 100):03d}",
                   CNNConfig("mobilenet_v3_small", _alpha))

__all__ = ["CNNConfig", "HybridConfig", "MoEConfig", "MobileViTV2Config", "StageConfig",
           "build_cnn", "build_hybrid", "build_mobilevit_v2", "check_input_shape",
           "check_input_size", "check_weights", "create_model", "get_config", "has_experts",
           "list_models", "moe_layers", "read_routing", "register_model", "saved_input_shape",
           "settle_batch_norms", "trace",
           "with_dispatch"]
