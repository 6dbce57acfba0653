"""Building a sublayer inside its parent's ``build`` so its weights get full path names."""

from tinymoe.backend import tf


def build_sublayer(layer, input_shape):
    """Builds ``layer`` inside its own name scope and returns its output shape.

    Called from a parent's ``build``, this gives the sublayer's weights names such as
    ``stage4_mvit/transformer_3/attn/qkv/kernel:0`` rather than ``stage4_mvit/kernel:0``.
    """
    with tf.name_scope(layer.name):
        layer.build(input_shape)
    return layer.compute_output_shape(input_shape)


class ScopedBuildMixin:
    """Builds a layer restored from a ``.keras`` file inside its own name scope.

    Keras builds restored layers outside any name scope, so their sublayers' weights would be
    named ``kernel:0`` instead of ``stem/conv/kernel:0``; with this, names survive a round
    trip.
    """

    def build_from_config(self, config):
        with tf.name_scope(self.name):
            super().build_from_config(config)
