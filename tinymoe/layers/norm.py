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

    def call(self, x):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centred = x - mean
        variance = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
        return centred * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
