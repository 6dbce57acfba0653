"""MobileViTv2 separable (linear) self-attention over patch tokens."""

from tinymoe.backend import keras, register, tf
from tinymoe.layers.building import ScopedBuildMixin, build_sublayer
from tinymoe.layers.conv import ConvBNAct
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
        batch_norm: bool, a batch norm after each projection (folded into it at export),
            for transformers without a layer norm (``norm="batch"``).
        pre_norm: bool, a batch norm on the input, folded into the qkv projection at
            inference (:func:`tinymoe.layers.norm.folded_batch_norm_pointwise`), for
            transformers whose pre-norm is a batch norm (``norm="batch_pre"``).
        bn_momentum: float, their momentum.

    Example:
        >>> SeparableSelfAttention()(tf.zeros([1, 4, 16, 32])).shape
        TensorShape([1, 4, 16, 32])
    """

    def __init__(self, batch_norm=False, pre_norm=False, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.batch_norm = bool(batch_norm)
        self.pre_norm = bool(pre_norm)
        self.bn_momentum = float(bn_momentum)
        if self.batch_norm and self.pre_norm:
            raise ValueError("batch_norm (after the projections) and pre_norm (before them) "
                             "are two forms of one choice: give one.")
        self.norm = (keras.layers.BatchNormalization(momentum=self.bn_momentum, name="norm")
                     if self.pre_norm else None)

    def _projection(self, channels, name):
        if self.batch_norm:
            return ConvBNAct(channels, 1, activation=None, bn_momentum=self.bn_momentum,
                             name=name)
        return keras.layers.Conv2D(channels, 1, name=name)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.norm is not None:
            build_sublayer(self.norm, input_shape)
        self.qkv = self._projection(1 + 2 * dim, "qkv")
        build_sublayer(self.qkv, input_shape)
        self.out_proj = self._projection(dim, "out_proj")
        build_sublayer(self.out_proj, input_shape)
        super().build(input_shape)

    def call(self, x, training=None):
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        q = lambda name, value: self.int8(name, value, training)  # noqa: E731
        if self.pre_norm:
            qkv = self.int8("qkv", folded_batch_norm_pointwise(self.norm, self.qkv, x, training),
                            training)
        else:
            qkv = self._project("qkv", self.qkv, x, training)
        # qkv: [B, P, N, d] -> [B, P, N, 1 + 2d]
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
        return self._project("out", self.out_proj, product, training)

    def _project(self, point, projection, x, training):
        if self.batch_norm:  # ConvBNAct holds the int8 point of its output
            return projection(x, training=training)
        return self.int8(point, projection(x), training)

    def int8_point_names(self):
        # CONV_2D, SOFTMAX, BATCH_MATMUL, RELU, MUL, CONV_2D (slices keep their input's);
        # with batch norms, the two CONV_2D outputs are the projections' (ConvBNAct) points.
        if self.batch_norm:
            return ("softmax", "context", "relu", "product")
        return ("qkv", "softmax", "context", "relu", "product", "out")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "batch_norm": self.batch_norm,
                "pre_norm": self.pre_norm, "bn_momentum": self.bn_momentum}
