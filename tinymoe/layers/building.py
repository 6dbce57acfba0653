"""Building a sublayer inside its parent's ``build`` so its weights get full path names."""

from tinymoe.backend import tf
from tinymoe.layers.int8 import Int8Points


def build_sublayer(layer, input_shape):
    """Builds ``layer`` inside its own name scope and returns its output shape.

    Called from a parent's ``build``, this gives the sublayer's weights names such as
    ``stage4_mvit/transformer_3/attn/qkv/kernel:0`` rather than ``stage4_mvit/kernel:0``.

    Example:
        >>> def build(self, input_shape):
        ...     build_sublayer(self.conv, input_shape)
    """
    with tf.name_scope(layer.name):
        layer.build(input_shape)
    return layer.compute_output_shape(input_shape)


class ScopedBuildMixin(Int8Points):
    """Builds a layer restored from a ``.keras`` file inside its own name scope.

    Keras builds restored layers outside any name scope, so their sublayers' weights would be
    named ``kernel:0`` instead of ``stem/conv/kernel:0``; with this, names survive a round
    trip.

    Example:
        >>> class MyBlock(ScopedBuildMixin, keras.layers.Layer):
        ...     ...
    """

    def build_from_config(self, config):
        with tf.name_scope(self.name):
            super().build_from_config(config)

    def get_prunable_weights(self):
        """The kernels magnitude pruning may zero (tfmot's prunable-layer protocol).

        Every convolution, projection and expert kernel of this layer and its sublayers; the
        router of a mixture of experts only when the layer's ``prune_router`` attribute is
        set (by :func:`tinymoe.optimize.prune`), since a few pruned router weights can move
        whole patches to another expert.
        """
        return [variable for owner, attribute, variable in kernel_slots(self)
                if attribute != "router_kernel" or getattr(owner, "prune_router", False)]


# Weight attributes that multiply activations, with the axes that index output channels (the
# axes TFLite quantises per channel once the weight is laid out as its op's filter).
KERNEL_CHANNEL_AXES = {
    "kernel": (-1,),                # Conv2D [kh, kw, in, out], Dense [in, out]
    "depthwise_kernel": (-2, -1),   # DepthwiseConv2D [kh, kw, in, multiplier]
    "router_kernel": (-1,),         # MoEFeedForward [d, E]
    "expert_kernel_in": (0, 2),     # MoEFeedForward [E, d, h]: one filter per (expert, unit)
    "expert_kernel_out": (2,),      # MoEFeedForward [E, h, d]: summed over experts
}


def kernel_slots(layer):
    """Every kernel in ``layer`` and its sublayers, as ``(owner, attribute, variable)``.

    Ordered by a depth-first walk of the sublayers, so two layers built from the same config
    list their kernels in the same order.

    Example:
        >>> [(owner.name, attribute) for owner, attribute, _ in kernel_slots(layer)][:1]
        [('conv', 'kernel')]
    """
    slots, seen = [], set()

    def visit(owner):
        if id(owner) in seen:
            return
        seen.add(id(owner))
        for attribute in KERNEL_CHANNEL_AXES:
            value = owner.__dict__.get(attribute)
            if isinstance(value, tf.Variable):
                slots.append((owner, attribute, value))
        for child in owner._flatten_layers(include_self=False, recursive=False):
            visit(child)

    visit(layer)
    return slots
