"""Activations that convert to ops TensorFlow Lite Micro runs in int8."""

from tinymoe.backend import tf

_ACTIVATIONS = {
    None: None,
    "linear": None,
    "relu": tf.nn.relu,
    # Fused into the convolution before it by the converter; bounded, so int8 keeps its
    # resolution.
    "relu6": tf.nn.relu6,
    # swish = x * sigmoid(x): LOGISTIC + MUL in TFLite.
    "swish": tf.nn.silu,
    # HARD_SWISH in TFLite.
    "hard_swish": lambda x: x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0),
}


def get_activation(name):
    """Returns the activation function called ``name`` (None or "linear" for identity).

    Args:
        name: one of None, "linear", "relu", "relu6", "swish", "hard_swish". GELU is not
            offered: TFLite Micro has no kernel for it.

    Example:
        >>> get_activation("swish")(tf.constant([0.0])).numpy()
        array([0.], dtype=float32)
    """
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; choose one of {sorted(k for k in _ACTIVATIONS if k)} "
            "(GELU is not offered: TFLite Micro has no kernel for it)."
        )
    return _ACTIVATIONS[name]


def check_activation(name):
    """Validates an activation name early, in a layer's ``__init__``.

    Example:
        >>> check_activation("hard_swish")
        'hard_swish'
    """
    get_activation(name)
    return name
