"""A layer norm written with ops that quantise to pure int8 in TFLite."""

from tinymoe.backend import keras, register, tf
from tinymoe.layers.building import ScopedBuildMixin


@register
class LayerNorm(ScopedBuildMixin, keras.layers.Layer):
    """Layer normalisation over the last axis, as MEAN, SUB, MUL, RSQRT and MUL.

    ``keras.layers.LayerNormalization`` converts with a float island (DEQUANTIZE, NEG,
    QUANTIZE); this one converts to int8 ops only, so it runs in TFLite Micro.

    Args:
        epsilon: float, added to the variance.
        fast: bool, the form a microcontroller runs fast, for a norm followed by a 1x1
            convolution: no gamma and beta (that convolution learns them), and the two means
            over the channels as 1x1 convolutions with a constant 1/C filter (CMSIS-NN runs
            a convolution several times faster than TFLite Micro's MEAN). Inputs must be
            4-D. MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL becomes CONV_2D, SUB, MUL, CONV_2D,
            ADD, RSQRT, MUL.

    Example:
        >>> LayerNorm()(tf.constant([[1.0, 3.0]])).numpy().round(3)
        array([[-1.,  1.]], dtype=float32)
    """

    def __init__(self, epsilon=1e-5, fast=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.fast = bool(fast)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if self.fast:
            if len(input_shape) != 4:
                raise ValueError(f"{self.name}: a fast LayerNorm takes 4-D inputs, got shape "
                                 f"{tuple(input_shape)}.")
            self._mean_filter = tf.constant(1.0 / channels, shape=(1, 1, channels, 1))
        else:
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def _channel_mean(self, x):
        if self.fast:  # [B, P, N, C] -> [B, P, N, 1] as a CONV_2D
            return tf.nn.conv2d(x, self._mean_filter, 1, "VALID")
        return tf.reduce_mean(x, axis=-1, keepdims=True)

    def call(self, x, training=None):
        q = lambda name, value: self.int8(name, value, training)  # noqa: E731
        mean = q("mean", self._channel_mean(x))
        centred = q("centred", x - mean)
        variance = q("variance", self._channel_mean(q("square", centred * centred)))
        shifted = q("shifted", variance + self.epsilon)
        observed = None
        if self.simulate_int8:
            # A token whose squares are under half an int8 step has an int8 variance of 0,
            # where int8 RSQRT gives the top of its range. That range is calibrated on the
            # float model, which never sees the 0: so the rsqrt point learns its range from
            # the float variance and clips the 1/sqrt(epsilon) (316) of a zero there. Learnt
            # from the int8 one, a single such token would stretch the range to 316 and
            # leave every other token's reciprocal a few of its 255 steps.
            shifted = tf.maximum(shifted, self.epsilon)
            _, float_variance = tf.nn.moments(x, axes=[-1], keepdims=True)
            observed = tf.math.rsqrt(float_variance + self.epsilon)
        scale = self.int8("rsqrt", tf.math.rsqrt(shifted), training, observed=observed)
        normalised = q("normalised", centred * scale)
        if self.fast:
            return normalised
        return q("out", q("scaled", normalised * self.gamma) + self.beta)

    def int8_point_names(self):
        # MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD: each output is an int8 tensor
        # (the fast form stops after the first MUL).
        points = ("mean", "centred", "square", "variance", "shifted", "rsqrt", "normalised")
        return points if self.fast else points + ("scaled", "out")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "fast": self.fast}


def folded_batch_norm_pointwise(norm, conv, x, training=None):
    """``conv(norm(x))`` for a ``BatchNormalization`` and a 1x1 ``Conv2D`` with a bias, written
    so that the int8 graph holds one CONV_2D.

    TFLite's converter folds a batch norm into the convolution *before* it, not into the one
    after it (a MUL per channel was left in front of the convolution, and with it a range of
    its own). At inference the norm is a per-channel affine map, so it is folded here, in the
    graph: the kernel is scaled per input channel and the shift goes into the bias; the
    converter then sees constants. Training normalises with the batch statistics as usual.

    Args:
        norm: a built ``keras.layers.BatchNormalization`` over the input channels.
        conv: a built 1x1 ``keras.layers.Conv2D`` with ``use_bias=True``.
        x: input ``[..., H, W, C_in]`` (4-D).
        training: training mode.

    Example:
        >>> y = folded_batch_norm_pointwise(norm, conv, tokens, training=False)
    """
    if training:
        return conv(norm(x, training=True))
    scale = norm.gamma * tf.math.rsqrt(norm.moving_variance + norm.epsilon)  # [C_in]
    shift = norm.beta - norm.moving_mean * scale
    kernel = conv.kernel * scale[:, None]  # [1, 1, C_in, C_out] scaled per input channel
    bias = conv.bias + tf.linalg.matvec(conv.kernel[0, 0], shift, transpose_a=True)
    return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias)
