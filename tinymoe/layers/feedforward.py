"""The dense pointwise feed-forward of a transformer layer on patch tokens."""

from tinymoe.backend import keras, register
from tinymoe.layers.activations import check_activation, get_activation
from tinymoe.layers.building import ScopedBuildMixin, build_sublayer
from tinymoe.layers.norm import folded_batch_norm_pointwise
from tinymoe.layers.int8 import activation_points, int8_activation


@register
class FeedForward(ScopedBuildMixin, keras.layers.Layer):
    """Two pointwise (1x1) convolutions, ``d -> hidden_dim -> d``, with an activation between.

    Args:
        hidden_dim: int, width of the hidden layer.
        activation: "swish" (MobileViTv2's choice), "hard_swish", "relu" or "relu6".
        pre_norm: bool, a batch norm on the input, folded into ``up`` at inference
            (:func:`tinymoe.layers.norm.folded_batch_norm_pointwise`; ``norm="batch"``).
        bn_momentum: float, their momentum.

    Example:
        >>> FeedForward(64)(tf.zeros([1, 4, 16, 32])).shape
        TensorShape([1, 4, 16, 32])
    """

    def __init__(self, hidden_dim, activation="swish", pre_norm=False, bn_momentum=0.9,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.activation = check_activation(activation)
        self.pre_norm = bool(pre_norm)
        self.bn_momentum = float(bn_momentum)
        self.norm = (keras.layers.BatchNormalization(momentum=self.bn_momentum, name="norm")
                     if self.pre_norm else None)
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be at least 1, got {hidden_dim}.")
        self.up = keras.layers.Conv2D(self.hidden_dim, 1, name="up")
        self.down = None
        self._act = get_activation(self.activation)

    def build(self, input_shape):
        if self.norm is not None:
            build_sublayer(self.norm, input_shape)
        build_sublayer(self.up, input_shape)
        self.down = keras.layers.Conv2D(int(input_shape[-1]), 1, name="down")
        build_sublayer(self.down, self.up.compute_output_shape(input_shape))
        super().build(input_shape)

    def call(self, x, training=None):
        up = (folded_batch_norm_pointwise(self.norm, self.up, x, training) if self.pre_norm
              else self.up(x))
        if self.simulate_int8:
            hidden = int8_activation(self, "up", self.activation, up, training)
            return self.int8("down", self.down(hidden), training)
        hidden = up
        return self.down(hidden if self._act is None else self._act(hidden))

    def int8_point_names(self):
        return activation_points("up", self.activation) + ("down",)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "activation": self.activation, "pre_norm": self.pre_norm,
                "bn_momentum": self.bn_momentum}


def feedforward_weights(ffn):
    """A dense :class:`FeedForward`'s weights as the arrays one expert of a
    :class:`tinymoe.layers.MoEFeedForward` holds, in :data:`tinymoe.layers.moe.EXPERT_WEIGHTS`
    order: input kernel ``[d, h]``, input bias ``[h]``, output kernel ``[h, d]``, output bias
    ``[d]`` (what upcycling copies into every expert).

    Example:
        >>> [w.shape for w in feedforward_weights(block.transformer[0].ffn)]
        [(64, 128), (128,), (128, 64), (64,)]
    """
    return [ffn.up.kernel.numpy()[0, 0], ffn.up.bias.numpy(), ffn.down.kernel.numpy()[0, 0],
            ffn.down.bias.numpy()]
