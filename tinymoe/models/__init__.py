"""The model registry: ``create_model(name, ...)`` and ``list_models()``."""

import dataclasses
import difflib

from tinymoe.models.mobilevit_v2 import (
    MobileViTV2Config, MoEConfig, build_mobilevit_v2, check_input_shape)
from tinymoe.models.dispatch import has_experts, with_dispatch
from tinymoe.models.tracing import read_routing, trace

_REGISTRY = {}


def register_model(name, config):
    """Adds a named variant (a :class:`MobileViTV2Config`) to the registry.

    Example:
        >>> register_model("mobilevit_v2_moe8_050", MobileViTV2Config(
        ...     width=0.5, moe=MoEConfig(num_experts=8)))
    """
    if name in _REGISTRY:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = config
    return config


def list_models():
    """Names of the registered model variants, sorted.

    Example:
        >>> "mobilevit_v2_moe_050" in list_models()
        True
    """
    return sorted(_REGISTRY)


def get_config(name):
    """The :class:`MobileViTV2Config` registered as ``name``.

    Example:
        >>> get_config("mobilevit_v2_moe_050").moe.num_experts
        4
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Registered: {', '.join(list_models())}.")
    return _REGISTRY[name]


def create_model(name, num_classes=1000, input_shape=(256, 256, 3), **overrides):
    """Builds a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: int, number of classes.
        input_shape: (height, width, channels), height and width multiples of 32.
        **overrides: fields of :class:`MobileViTV2Config` to change, e.g.
            ``moe=MoEConfig(num_experts=8)`` or ``dropout=0.0``.

    Example:
        >>> model = create_model("mobilevit_v2_moe_050", num_classes=10, input_shape=(96, 96, 3))
        >>> model.output_shape
        (None, 10)
    """
    config = get_config(name)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return build_mobilevit_v2(config, num_classes, input_shape, name=name)


register_model("mobilevit_v2_050", MobileViTV2Config(width=0.5))
register_model("mobilevit_v2_075", MobileViTV2Config(width=0.75))
register_model("mobilevit_v2_100", MobileViTV2Config(width=1.0))
# The flagship: width 0.5, 4 experts (top-1, per-patch routing) in the last transformer layer
# of stages 4 and 5.
register_model("mobilevit_v2_moe_050", MobileViTV2Config(width=0.5, moe=MoEConfig()))

__all__ = ["MoEConfig", "MobileViTV2Config", "build_mobilevit_v2", "check_input_shape",
           "create_model", "get_config", "has_experts", "list_models", "read_routing",
           "register_model", "trace", "with_dispatch"]
