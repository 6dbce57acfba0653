"""The int8 model simulated inside tinymoe's layers, for quantisation-aware training.

The TFLite converter quantises every tensor our layers compute (per tensor, asymmetric, the
range calibrated as the minimum and maximum over the representative images): inside a layer
norm the mean, the centred input, its square, the variance, the reciprocal square root and
each product; inside the attention the projections, the context and the product; the
sigmoid of every swish; the router, each expert's hidden layer and the gated output of a
mixture of experts; every residual sum. tfmot only sees a Keras layer's kernels and output,
so our layers fake-quantise those tensors themselves, at *int8 points*, once
:func:`enable_int8_simulation` (called by :func:`tinymoe.optimize.quantize_aware`) has given
them ranges.

- Training: each point fake-quantises with a moving-average range (decay 0.999, the first
  batch sets it), as tfmot's activation quantisers do.
- Observation (:func:`observe_int8_ranges`): the points pass their tensors through and record
  the minimum and maximum, as the converter's calibrator does on the float model.
- Calibration (:func:`tinymoe.optimize.calibrate_int8_ranges`): each point takes the scale
  and zero point of its tensor in the converted model, so that the QAT model quantises as
  its int8 model does.
- Points named ``sigmoid...`` or ``softmax...`` have the range TFLite fixes for LOGISTIC and
  SOFTMAX outputs: scale 1/256, zero point -128, i.e. [0, 255/256].

A layer that does not simulate int8 (the default) computes exactly what it did before.
"""

import contextlib

from tinymoe.backend import tf

EMA_DECAY = 0.999
FIXED_RANGE = (0.0, 255.0 / 256.0)  # TFLite's int8 LOGISTIC and SOFTMAX output
_FIXED_KINDS = ("sigmoid", "softmax")
_observing = []


class Int8Points:
    """Mixin of tinymoe layers: named points where the int8 model quantises a tensor.

    A layer lists its points in :meth:`int8_point_names` and passes each tensor through
    ``self.int8(name, x, training)``. ``simulate_int8`` is part of the layer's config, so a
    layer rebuilt from its config gets its points (and range variables) back.

    Example:
        >>> class Scale(Int8Points, keras.layers.Layer):
        ...     def int8_point_names(self):
        ...         return ("out",)
        ...     def call(self, x, training=None):
        ...         return self.int8("out", 2.0 * x, training)
    """

    def __init__(self, simulate_int8=False, **kwargs):
        super().__init__(**kwargs)
        self.simulate_int8 = bool(simulate_int8)
        self._int8_ranges = None

    def int8_point_names(self):
        """Names of this layer's own int8 points (not its sublayers'); known once built."""
        return ()

    def build(self, input_shape):
        super().build(input_shape)
        if self.simulate_int8:
            enable_int8_simulation(self)

    def get_config(self):
        return {**super().get_config(), "simulate_int8": self.simulate_int8}

    def int8(self, name, x, training=None, observed=None):
        """``x`` as the int8 model will hold it at point ``name`` (``x`` itself unless
        simulating). The range is learnt from ``observed`` where given (a tensor of the
        float model that calibration would see in place of ``x``), else from ``x``."""
        if self._int8_ranges is None:
            return x
        if name.startswith(_FIXED_KINDS):
            if _observing:
                return x
            return tf.quantization.fake_quant_with_min_max_args(x, *FIXED_RANGE, num_bits=8)
        state = self._int8_ranges[name]  # [min, max, seen]
        seen_values = x if observed is None else observed
        low, high = tf.reduce_min(seen_values), tf.reduce_max(seen_values)
        if _observing:
            seen = state[2] > 0
            state.assign(tf.stack([tf.where(seen, tf.minimum(state[0], low), low),
                                   tf.where(seen, tf.maximum(state[1], high), high), 1.0]))
            return x
        if training:
            seen = state[2] > 0
            ema = lambda old, new: EMA_DECAY * old + (1.0 - EMA_DECAY) * new  # noqa: E731
            state = state.assign(tf.stack([tf.where(seen, ema(state[0], low), low),
                                           tf.where(seen, ema(state[1], high), high), 1.0]))
        quantized = tf.quantization.fake_quant_with_min_max_vars(
            x, tf.minimum(state[0], 0.0), tf.maximum(state[1], 0.0), num_bits=8)
        # A point no batch has reached yet (e.g. the sparse form's, when training masked)
        # has no range: it passes its tensor through until observed.
        return tf.where(state[2] > 0, quantized, x)


def int8_layers(layer):
    """``layer`` and its sublayers that have int8 points, depth first (a fixed order).

    Example:
        >>> [owner.name for owner in int8_layers(model.get_layer("stem"))]
        ['stem']
    """
    found, seen = [], set()

    def visit(owner):
        if id(owner) in seen:
            return
        seen.add(id(owner))
        if isinstance(owner, Int8Points):
            found.append(owner)
        for child in owner._flatten_layers(include_self=False, recursive=False):
            visit(child)

    visit(layer)
    return found


def enable_int8_simulation(layer):
    """Gives ``layer`` (built) and its sublayers their int8 ranges: from now on they
    fake-quantise every tensor the int8 model quantises. Idempotent.

    Example:
        >>> enable_int8_simulation(model.get_layer("stage4_mvit"))
    """
    for owner in int8_layers(layer):
        if owner._int8_ranges is not None:
            continue
        owner.simulate_int8 = True
        with tf.name_scope(owner.name):
            owner._int8_ranges = {
                name: owner.add_weight(name=f"int8_{name}", shape=(3,), initializer="zeros",
                                       trainable=False)
                for name in owner.int8_point_names() if not name.startswith(_FIXED_KINDS)}


def int8_range_variables(layer):
    """Every range variable of ``layer`` and its sublayers (to tell them from the float
    model's weights).

    Example:
        >>> ranges = int8_range_variables(qat.get_layer("quant_stem").layer)
    """
    return [variable for owner in int8_layers(layer)
            for variable in (owner._int8_ranges or {}).values()]


@contextlib.contextmanager
def observe_int8_ranges():
    """Within this context (eager calls), int8 points record the minimum and maximum of
    their tensors, replacing their ranges, and pass the tensors through unquantised: the
    converter's calibration. Ranges are reset when the context opens.

    Example:
        >>> with observe_int8_ranges():
        ...     for image in images: qat(image[None], training=False)
    """
    _observing.append(True)
    try:
        yield
    finally:
        _observing.pop()


def reset_int8_ranges(layer):
    """Forgets every range of ``layer`` and its sublayers (the next batch or observation
    sets them).

    Example:
        >>> reset_int8_ranges(qat.get_layer("quant_stage4_mvit").layer)
    """
    for variable in int8_range_variables(layer):
        variable.assign(tf.zeros_like(variable))


def activation_points(name, activation):
    """The int8 points of ``activation`` applied at point ``name`` (see
    :func:`int8_activation`).

    Example:
        >>> activation_points("up", "swish")
        ('up', 'sigmoid_up', 'up_swish')
    """
    if activation == "swish":
        return (name, f"sigmoid_{name}", f"{name}_swish")
    if activation == "hard_swish":
        return (name, f"{name}_hard_swish")
    return (name,)


def int8_activation(layer, name, activation, x, training=None):
    """``activation(x)`` with the int8 points of its TFLite ops, where ``x`` is an op's output.

    ReLU and ReLU6 fuse into the op before them (one point, after the activation); swish is
    LOGISTIC (fixed range) and MUL after the op's own output; hard swish is HARD_SWISH.

    Example:
        >>> hidden = int8_activation(self, "up", "swish", self.up(x), training)
    """
    from tinymoe.layers.activations import get_activation

    act = get_activation(activation)
    if layer._int8_ranges is None:
        return x if act is None else act(x)
    if activation in ("relu", "relu6") or act is None:
        return layer.int8(name, x if act is None else act(x), training)
    x = layer.int8(name, x, training)
    if activation == "swish":
        return layer.int8(f"{name}_swish",
                          x * layer.int8(f"sigmoid_{name}", tf.sigmoid(x), training), training)
    return layer.int8(f"{name}_hard_swish", act(x), training)


# The TFLite op that quantises the tensor at each point, by point name (checked when a QAT
# model takes its ranges from the converted model, see
# tinymoe.optimize.calibrate_int8_ranges).
_POINT_OPS = {
    "mean": ("MEAN",), "variance": ("MEAN",), "router_mean": ("MEAN",), "centred": ("SUB",),
    "shifted": ("ADD",), "add": ("ADD",), "attn_add": ("ADD",), "ffn_add": ("ADD",),
    "square": ("MUL",), "normalised": ("MUL",), "scaled": ("MUL",), "product": ("MUL",),
    "gated": ("MUL",), "rsqrt": ("RSQRT",), "relu": ("RELU",), "context": ("BATCH_MATMUL",),
    "qkv": ("CONV_2D",), "up": ("CONV_2D",), "down": ("CONV_2D",), "local_pw": ("CONV_2D",),
    "router": ("CONV_2D",), "conv": ("CONV_2D", "DEPTHWISE_CONV_2D"),
    "out": ("ADD", "CONV_2D"), "expert_out": ("FULLY_CONNECTED",),
}


def point_ops(name):
    """The TFLite ops that may quantise the tensor at an int8 point called ``name``.

    Example:
        >>> point_ops("rsqrt"), point_ops("sigmoid_up")
        (('RSQRT',), ('LOGISTIC',))
    """
    if name.startswith("sigmoid"):
        return ("LOGISTIC",)
    if name.startswith("softmax"):
        return ("SOFTMAX",)
    if name.endswith("_hard_swish"):
        return ("HARD_SWISH",)
    if name.endswith("_swish"):
        return ("MUL",)
    if name.startswith("expert") and name[6:].isdigit():
        return ("FULLY_CONNECTED",)
    return _POINT_OPS[name]


def set_int8_range(layer, name, low, high):
    """Sets the range of ``layer``'s int8 point ``name`` (seen, so it quantises).

    Example:
        >>> set_int8_range(norm, "rsqrt", 0.0, 3.5)
    """
    layer._int8_ranges[name].assign([low, high, 1.0])


def is_fixed(name):
    """True for points whose range TFLite fixes (sigmoid and softmax outputs).

    Example:
        >>> is_fixed("softmax"), is_fixed("rsqrt")
        (True, False)
    """
    return name.startswith(_FIXED_KINDS)
