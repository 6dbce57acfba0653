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

    Example:
        >>> LayerNorm()(tf.constant([[1.0, 3.0]])).numpy().round(3)
        array([[-1.,  1.]], dtype=float32)
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def call(self, x, training=None):
        q = lambda name, value: self.int8(name, value, training)  # noqa: E731
        mean = q("mean", tf.reduce_mean(x, axis=-1, keepdims=True))
        centred = q("centred", x - mean)
        variance = q("variance", tf.reduce_mean(q("square", centred * centred), axis=-1,
                                                keepdims=True))
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
        return q("out", q("scaled", q("normalised", centred * scale) * self.gamma) + self.beta)

    def int8_point_names(self):
        # MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD: each output is an int8 tensor.
        return ("mean", "centred", "square", "variance", "shifted", "rsqrt", "normalised",
                "scaled", "out")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
