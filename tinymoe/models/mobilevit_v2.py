"""MobileViTv2 with optional mixture-of-experts feed-forwards.

Reference: Mehta and Rastegari, "Separable Self-attention for Mobile Vision Transformers"
(arXiv 2206.02680); the layout and widths follow its reference implementation (ml-cvnets).
The experts follow Mensah et al., "Towards Vision Mixture of Experts for Wildlife Monitoring
on the Edge" (arXiv 2411.07834).

Differences from the reference, each for TFLite Micro: the layer norm normalises each token
over its channels (the reference's GroupNorm over the whole map does not convert to int8 ops),
and a feature map that 2x2 patches cannot tile is padded with copies of its last row and
column instead of resized (zero padding gives tokens of zero variance, which int8 cannot hold).
"""

import dataclasses
import math
from typing import Optional, Tuple

from tinymoe.backend import keras
from tinymoe.layers import ConvBNAct, InvertedResidual, MobileViTV2Block, make_divisible
from tinymoe.layers.activations import check_activation
from tinymoe.layers.moe import ROUTING_MODES, validate_moe_args
from tinymoe.layers.transformer import NORMS
from tinymoe.layers.patches import check_pad_mode

TOTAL_STRIDE = 32
TRANSFORMER_STAGES = (3, 4, 5)
# What a model's MoE configuration may say: "auto" becomes "patch" or "token" per layer;
# "image" routes every layer per image.
MODEL_ROUTING_MODES = ROUTING_MODES + ("auto",)


def resolve_routing(routing, num_patches, num_experts, where):
    """The routing of an MoE layer with ``num_patches`` patches in a model.

    A per-patch layer needs at least 2 patches per expert: with fewer, one image's patches
    cannot spread over the experts and a fixed-capacity dispatch wastes most of its slots
    (at 4 patches and 4 experts, any capacity factor below 3 gives 2 slots per expert,
    twice the feed-forwards of one expert). "auto" routes such a layer per token and the
    others per patch; an explicit "patch" is refused there.

    Args:
        routing: "patch", "token", "image" or "auto".
        num_patches: patches per image at the layer.
        num_experts: E.
        where: the layer's name, for the error message.

    Returns:
        "patch", "token" or "image".

    Example:
        >>> resolve_routing("auto", 4, 4, "stage5_mvit")
        'token'
    """
    if routing not in MODEL_ROUTING_MODES:
        raise ValueError(f"routing must be one of {MODEL_ROUTING_MODES}, got {routing!r}.")
    enough = int(num_patches) >= 2 * int(num_experts)
    if routing == "auto":
        return "patch" if enough else "token"
    if routing == "patch" and not enough:
        raise ValueError(
            f"{where}: per-patch routing needs at least 2 x {num_experts} experts = "
            f"{2 * int(num_experts)} patches per image, but this layer has {num_patches}. "
            f"Route it per token (routing='token' or 'auto') or move the experts to a stage "
            f"with more patches (a larger input).")
    return routing


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Where and how the feed-forwards become mixtures of experts.

    Args:
        num_experts: experts per MoE layer.
        top_k: experts used per patch.
        layers: ``(stage, index)`` pairs naming the transformer layers that get experts:
            stage 3, 4 or 5 (the three MobileViTv2 stages with attention), index within that
            stage's transformer layers (negative counts from the end).
        routing: "auto" (per patch where a layer has at least 2 x E patches per image, per
            token elsewhere), "patch" (refused for a layer with fewer patches), "token", or
            "image" (one expert per image: only its MACs run on the device).
        activation: expert activation, "swish" or "hard_swish".
        expert_hidden_dim: hidden width of each expert; None keeps the dense feed-forward's
            width, so that experts can start as copies of a trained dense feed-forward.
        aux_loss_weight: load-balancing loss weight (0 disables).
        normalize_gates: renormalise the gates over the chosen experts.
        expert_dropout: dropout on the experts' hidden units in training (0 disables; see
            :class:`tinymoe.layers.MoEFeedForward`).

    Example:
        >>> MoEConfig(num_experts=8, top_k=2, layers=((5, -1),), routing="token")
    """

    num_experts: int = 4
    top_k: int = 1
    layers: Tuple[Tuple[int, int], ...] = ((4, -1), (5, -1))
    routing: str = "auto"
    activation: str = "swish"
    expert_hidden_dim: Optional[int] = None
    aux_loss_weight: float = 0.01
    normalize_gates: bool = False
    expert_dropout: float = 0.0

    def __post_init__(self):
        validate_moe_args(self.num_experts, self.top_k, self.routing,
                          self.expert_hidden_dim or 1, MODEL_ROUTING_MODES)
        if not 0.0 <= self.expert_dropout < 1.0:
            raise ValueError(f"expert_dropout is a dropout rate in [0, 1), got "
                             f"{self.expert_dropout}.")
        for stage, _ in self.layers:
            if stage not in TRANSFORMER_STAGES:
                raise ValueError(f"MoE layer stage must be one of {TRANSFORMER_STAGES}, got "
                                 f"{stage}.")

    def layer_kwargs(self, num_patches, where):
        """Arguments for :class:`tinymoe.layers.MoEFeedForward` (hidden width excepted) in a
        block with ``num_patches`` patches per image (``where``: its name, for errors)."""
        routing = resolve_routing(self.routing, num_patches, self.num_experts, where)
        return {"num_experts": self.num_experts, "top_k": self.top_k, "routing": routing,
                "activation": self.activation, "aux_loss_weight": self.aux_loss_weight,
                "normalize_gates": self.normalize_gates, "expert_dropout": self.expert_dropout}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of an explicit layout: inverted residual blocks, then (optionally) a
    MobileViTv2 block with attention.

    Args:
        channels: output channels of the inverted residual blocks.
        blocks: number of inverted residual blocks.
        stride: stride of the first block.
        expand_ratio: expansion of the inverted residual blocks (1: no expansion
            convolution, the depthwise convolution runs on the input channels).
        activation: "swish", "hard_swish" (one HARD_SWISH op in int8), or "relu6" / "relu"
            (fused into the convolution by the converter: no activation tensor at all).
        attn_dim: attention width of the MobileViTv2 block; None for no attention.
        attn_layers: transformer layers of that block.

    Example:
        >>> StageConfig(24, blocks=1, stride=2, expand_ratio=1, activation="relu")
    """

    channels: int
    blocks: int = 1
    stride: int = 2
    expand_ratio: float = 2.0
    activation: str = "swish"
    attn_dim: Optional[int] = None
    attn_layers: int = 0


@dataclasses.dataclass(frozen=True)
class MobileViTV2Config:
    """A MobileViTv2 variant: a width multiplier and, optionally, experts.

    Args:
        width: width multiplier (0.5, 0.75, 1.0, ...).
        moe: None for a dense model, or a :class:`MoEConfig`.
        ffn_multiplier: feed-forward width as a multiple of the attention width.
        expand_ratio: expansion of the inverted residual blocks.
        bn_momentum: batch norm momentum.
        dropout: dropout before the classifier.
        layout: five :class:`StageConfig` that replace the width-derived stages (for
            microcontroller variants); ``width`` then only sets the stem, unless
            ``stem_channels`` is given.
        stem_channels: channels of the stem convolution (None: from ``width``).
        stem_activation: activation of the stem convolution.
        pad_mode: how the attention blocks pad a map that 2x2 patches cannot tile (e.g. 3x3
            at 96x96): "edge" or "zeros" (see :class:`tinymoe.layers.PatchUnfold`).
        block_activation: activation of the attention blocks' local depthwise convolution
            and feed-forwards: "swish" (MobileViTv2's; LOGISTIC + MUL in int8), "hard_swish",
            or "relu6" / "relu" (fused into the convolution before it: no op at all).
        norm: the transformers' pre-norms: "layer" (MobileViTv2's, per token; MEAN, SUB,
            MUL, RSQRT... in int8), "batch" (batch norms, folded into the convolutions after
            them in the inference graph: no op at all) or "mixed" (a fast layer norm before
            the attention, a folded batch norm before the feed-forward); the batch forms for
            dense feed-forwards only.

    Example:
        >>> build_mobilevit_v2(MobileViTV2Config(width=0.5, moe=MoEConfig()), num_classes=10)
    """

    width: float = 1.0
    moe: Optional[MoEConfig] = None
    ffn_multiplier: float = 2.0
    expand_ratio: float = 2.0
    bn_momentum: float = 0.9
    dropout: float = 0.1
    layout: Optional[Tuple[StageConfig, ...]] = None
    stem_channels: Optional[int] = None
    stem_activation: str = "swish"
    pad_mode: str = "edge"
    block_activation: str = "swish"
    norm: str = "layer"

    def __post_init__(self):
        check_pad_mode(self.pad_mode)
        check_activation(self.block_activation)
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}.")
        if self.layout is not None:
            if len(self.layout) != 5:
                raise ValueError(f"layout must have 5 stages, got {len(self.layout)}.")
            if math.prod(stage.stride for stage in self.layout) * 2 != TOTAL_STRIDE:
                raise ValueError(f"The stem (stride 2) and the layout's strides must downsample "
                                 f"by {TOTAL_STRIDE}, got strides "
                                 f"{[stage.stride for stage in self.layout]}.")
            for number, stage in enumerate(self.layout, start=1):
                wanted = number in TRANSFORMER_STAGES
                if (stage.attn_dim is not None) != wanted:
                    raise ValueError(f"Stage {number} must {'' if wanted else 'not '}have "
                                     f"attention (attn_dim), as MoE layers and routing expect "
                                     f"stages {TRANSFORMER_STAGES} to.")

    def stages(self):
        """The five stages as dicts: output channels, blocks, stride, expansion, activation,
        attention width/layers."""
        if self.layout is not None:
            return [{key: value for key, value in dataclasses.asdict(stage).items()
                     if value is not None} for stage in self.layout]
        w = self.width
        stages = [
            {"channels": make_divisible(64 * w, 16), "blocks": 1, "stride": 1},
            {"channels": make_divisible(128 * w, 8), "blocks": 2, "stride": 2},
        ]
        for channels, attn, layers in ((256, 128, 2), (384, 192, 4), (512, 256, 3)):
            stages.append({"channels": make_divisible(channels * w, 8), "blocks": 1,
                           "stride": 2, "attn_dim": make_divisible(attn * w, 8),
                           "attn_layers": layers})
        return stages

    def stem_width(self):
        """Channels of the stem convolution."""
        if self.stem_channels is not None:
            return int(self.stem_channels)
        return make_divisible(min(max(32 * self.width, 16), 64), 8, 16)


def build_mobilevit_v2(config, num_classes=1000, input_shape=(256, 256, 3), name=None):
    """Builds a MobileViTv2 classifier as a functional Keras model.

    The model takes images with pixel values in [0, 255] (so that int8 inputs on the device
    are raw pixels minus 128) and returns class logits.

    Args:
        config: a :class:`MobileViTV2Config`.
        num_classes: int, number of classes.
        input_shape: (height, width, channels); height and width must be multiples of 32.
        name: model name.

    Example:
        >>> model = build_mobilevit_v2(MobileViTV2Config(width=0.5), 10, (64, 64, 3))
        >>> model.output_shape
        (None, 10)
    """
    input_shape = check_input_shape(input_shape)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    moe_layers = {}
    if config.moe is not None:
        for stage, index in config.moe.layers:
            moe_layers.setdefault(stage, []).append(index)

    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = ConvBNAct(config.stem_width(), 3, 2, activation=config.stem_activation,
                  bn_momentum=config.bn_momentum, name="stem")(x)
    for number, stage in enumerate(config.stages(), start=1):
        for block in range(stage["blocks"]):
            x = InvertedResidual(stage["channels"], stage["stride"] if block == 0 else 1,
                                 stage.get("expand_ratio", config.expand_ratio),
                                 activation=stage.get("activation", "swish"),
                                 bn_momentum=config.bn_momentum,
                                 name=f"stage{number}_mv2_{block}")(x)
        if "attn_dim" in stage:
            attn_dim = stage["attn_dim"]
            ffn_dim = int(config.ffn_multiplier * attn_dim) // 16 * 16
            moe = None
            if number in moe_layers:
                moe = config.moe.layer_kwargs(num_patches(x.shape[1], x.shape[2]),
                                              f"stage{number}_mvit")
                if config.moe.expert_hidden_dim:  # the experts' width; dense layers keep theirs
                    moe["hidden_dim"] = int(config.moe.expert_hidden_dim)
            x = MobileViTV2Block(attn_dim, ffn_dim, stage["attn_layers"],
                                 moe_layers=tuple(moe_layers.get(number, ())), moe=moe,
                                 activation=config.block_activation,
                                 bn_momentum=config.bn_momentum, pad_mode=config.pad_mode,
                                 norm=config.norm, name=f"stage{number}_mvit")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(int(num_classes), name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or "mobilevit_v2")


def num_patches(height, width, patch_size=2):
    """Patches per image of a MobileViTv2 block on a ``height`` x ``width`` feature map
    (padded up to whole patches).

    Example:
        >>> num_patches(4, 4)  # stage 5 of a 128x128 model
        4
    """
    return -(-int(height) // patch_size) * -(-int(width) // patch_size)


def check_input_shape(input_shape):
    """Returns ``input_shape`` as a tuple of ints, or raises a ValueError naming the problem.

    Example:
        >>> check_input_shape((100, 100, 3))  # ValueError: not a multiple of 32
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}.")
    height, width, channels = shape
    for label, size in (("height", height), ("width", width)):
        if size < TOTAL_STRIDE or size % TOTAL_STRIDE:
            raise ValueError(
                f"Input {label} {size} cannot be taken: MobileViTv2 downsamples by "
                f"{TOTAL_STRIDE}, so height and width must be positive multiples of "
                f"{TOTAL_STRIDE} (e.g. 96, 128, 256).")
    if channels < 1:
        raise ValueError(f"Input channels must be at least 1, got {channels}.")
    return shape
