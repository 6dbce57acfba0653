"""MobileViTv2 separable (linear) self-attention over patch tokens."""

from tinymoe.backend import keras, register, tf
from tinymoe.layers.building import ScopedBuildMixin, build_sublayer
from tinymoe.layers.norm import folded_batch_norm_pointwise


@register
class SeparableSelfAttention(ScopedBuildMixin, keras.layers.Layer):
    """Separable self-attention of MobileViTv2, linear in the number of patches.

    On tokens ``[B, P, N, d]`` (P pixel positions per patch, N patches): one pointwise
    projection to 1 + 2d channels gives a query score, keys and values; the scores are a
    softmax over the N patches, the context vector is the score-weighted sum of the keys,
    and the output is ``out_proj(relu(values) * context)``. Every op (CONV_2D, SOFTMAX, MUL,
    BATCH_MATMUL, RELU) runs in TFLite Micro in int8.

    Args:
        pre_norm: bool, a batch norm on the input, folded into the qkv projection at
            inference (:func:`tinymoe.layers.norm.folded_batch_norm_pointwise`), for
            transformers whose pre-norm is a batch norm (``norm="batch"``).
        bn_momentum: float, their momentum.

    Example:
        >>> SeparableSelfAttention()(tf.zeros([1, 4, 16, 32])).shape
        TensorShape([1, 4, 16, 32])
    """

    def __init__(self, pre_norm=False, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.pre_norm = bool(pre_norm)
        self.bn_momentum = float(bn_momentum)
        self.norm = (keras.layers.BatchNormalization(momentum=self.bn_momentum, name="norm")
                     if self.pre_norm else None)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.norm is not None:
            build_sublayer(self.norm, input_shape)
        self.qkv = keras.layers.Conv2D(1 + 2 * dim, 1, name="qkv")
        build_sublayer(self.qkv, input_shape)
        self.out_proj = keras.layers.Conv2D(dim, 1, name="out_proj")
        build_sublayer(self.out_proj, input_shape)
        super().build(input_shape)

    def call(self, x, training=None):
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        q = lambda name, value: self.int8(name, value, training)  # noqa: E731
        if self.pre_norm:
            qkv = folded_batch_norm_pointwise(self.norm, self.qkv, x, training)
        else:
            qkv = self.qkv(x)
        qkv = q("qkv", qkv)  # [B, P, N, d] -> [B, P, N, 1 + 2d]
        if training:
            # The same values; the gradient of a split is one concatenation, that of three
            # slices three zero-padded copies of qkv summed. Inference keeps STRIDED_SLICE.
            query, key, value = tf.split(qkv, [1, dim, dim], axis=-1)
        else:
            query, key, value = qkv[..., :1], qkv[..., 1:1 + dim], qkv[..., 1 + dim:]
        scores = q("softmax", tf.nn.softmax(tf.reshape(query, [-1, positions, patches]),
                                            axis=-1))
        scores = tf.reshape(scores, [-1, positions, 1, patches])  # softmax over the N patches
        context = q("context", tf.matmul(scores, key))  # [B, P, 1, N] @ [B, P, N, d]
        product = q("product", q("relu", tf.nn.relu(value)) * context)
        return q("out", self.out_proj(product))

    def int8_point_names(self):
        # CONV_2D, SOFTMAX, BATCH_MATMUL, RELU, MUL, CONV_2D (slices keep their input's).
        return ("qkv", "softmax", "context", "relu", "product", "out")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pre_norm": self.pre_norm,
                "bn_momentum": self.bn_momentum}
