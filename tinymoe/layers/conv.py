"""Convolution blocks of MobileViTv2: conv + batch norm + activation, and the inverted residual."""

from tinymoe.backend import keras, register
from tinymoe.layers.activations import check_activation, get_activation
from tinymoe.layers.building import ScopedBuildMixin, build_sublayer
from tinymoe.layers.int8 import activation_points, int8_activation


@register
class ConvBNAct(ScopedBuildMixin, keras.layers.Layer):
    """A convolution, batch normalisation and an optional activation.

    Args:
        filters: int, output channels. Ignored (must equal the input channels) when
            ``depthwise=True``.
        kernel_size: int, square kernel size.
        strides: int, stride of the convolution.
        depthwise: bool, a depthwise convolution (one filter per input channel).
        activation: None, "relu", "relu6", "swish" or "hard_swish".
        use_norm: bool, add batch normalisation (the convolution then has no bias).
        bn_momentum: float, batch norm momentum; 0.9 is the reference's (PyTorch's 0.1).
            With 0.99, a few hundred steps leave the moving variance near its initial 1.0,
            and inference-mode accuracy at chance while training accuracy is high.

    Example:
        >>> layer = ConvBNAct(16, kernel_size=3, strides=2, activation="swish")
        >>> layer(tf.zeros([1, 32, 32, 3])).shape
        TensorShape([1, 16, 16, 16])
    """

    def __init__(self, filters, kernel_size=3, strides=1, depthwise=False, activation="swish",
                 use_norm=True, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.depthwise = bool(depthwise)
        self.activation = check_activation(activation)
        self.use_norm = bool(use_norm)
        self.bn_momentum = float(bn_momentum)
        if self.depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                self.kernel_size, self.strides, padding="same", use_bias=not self.use_norm,
                name="conv")
        else:
            self.conv = keras.layers.Conv2D(
                self.filters, self.kernel_size, self.strides, padding="same",
                use_bias=not self.use_norm, name="conv")
        self.norm = (keras.layers.BatchNormalization(momentum=self.bn_momentum, name="norm")
                     if self.use_norm else None)
        self._act = get_activation(self.activation)

    def build(self, input_shape):
        if self.depthwise and input_shape[-1] != self.filters:
            raise ValueError(
                f"{self.name}: a depthwise ConvBNAct keeps the channels, but filters={self.filters} "
                f"and the input has {input_shape[-1]} channels.")
        build_sublayer(self.conv, input_shape)
        if self.norm is not None:
            build_sublayer(self.norm, self.conv.compute_output_shape(input_shape))
        super().build(input_shape)

    def call(self, x, training=None):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x, training=training)
        if self.simulate_int8:  # batch norm folds into the convolution
            return int8_activation(self, "conv", self.activation, x, training)
        return x if self._act is None else self._act(x)

    def int8_point_names(self):
        return activation_points("conv", self.activation)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "depthwise": self.depthwise,
                "activation": self.activation, "use_norm": self.use_norm,
                "bn_momentum": self.bn_momentum}


@register
class InvertedResidual(ScopedBuildMixin, keras.layers.Layer):
    """The MobileNetV2 inverted residual block used by MobileViTv2.

    1x1 expansion (swish), 3x3 depthwise (swish, carries the stride), 1x1 projection (no
    activation), with a residual connection when the stride is 1 and the channels match.

    Args:
        filters: int, output channels.
        strides: int, 1 or 2.
        expand_ratio: float, hidden channels = round(input channels x expand_ratio).
        activation: activation of the expansion and depthwise convolutions.
        bn_momentum: float, batch norm momentum.

    Example:
        >>> InvertedResidual(32, strides=2)(tf.zeros([1, 16, 16, 16])).shape
        TensorShape([1, 8, 8, 32])
    """

    def __init__(self, filters, strides=1, expand_ratio=2.0, activation="swish",
                 bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.expand_ratio = float(expand_ratio)
        self.activation = check_activation(activation)
        self.bn_momentum = float(bn_momentum)
        self.expand = None
        self.depthwise = None
        self.project = ConvBNAct(self.filters, 1, activation=None, bn_momentum=self.bn_momentum,
                                 name="project")

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        hidden = make_divisible(in_channels * self.expand_ratio, 8)
        shape = input_shape
        if self.expand_ratio != 1:
            self.expand = ConvBNAct(hidden, 1, activation=self.activation,
                                    bn_momentum=self.bn_momentum, name="expand")
            build_sublayer(self.expand, shape)
            shape = self.expand.compute_output_shape(shape)
        else:
            hidden = in_channels
        self.depthwise = ConvBNAct(hidden, 3, self.strides, depthwise=True,
                                   activation=self.activation, bn_momentum=self.bn_momentum,
                                   name="depthwise")
        build_sublayer(self.depthwise, shape)
        build_sublayer(self.project, self.depthwise.compute_output_shape(shape))
        self.use_residual = self.strides == 1 and in_channels == self.filters
        super().build(input_shape)

    def call(self, x, training=None):
        y = x if self.expand is None else self.expand(x, training=training)
        y = self.depthwise(y, training=training)
        y = self.project(y, training=training)
        return self.int8("add", x + y, training) if self.use_residual else y

    def int8_point_names(self):
        return ("add",) if self.use_residual else ()

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if self.strides > 1:
            h = None if h is None else -(-h // self.strides)
            w = None if w is None else -(-w // self.strides)
        return (input_shape[0], h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "expand_ratio": self.expand_ratio, "activation": self.activation,
                "bn_momentum": self.bn_momentum}


def make_divisible(value, divisor=8, min_value=None):
    """Rounds ``value`` to the nearest multiple of ``divisor``, never more than 10% below it.

    The width rule of the MobileNet family, so that width multipliers give hardware-friendly
    channel counts.

    Example:
        >>> make_divisible(0.75 * 64, 16)
        48
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)
