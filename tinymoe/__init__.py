"""tinymoe: MobileViTv2 with mixtures of experts, trained in Keras, run on microcontrollers."""

from tinymoe._version import __version__  # noqa: F401

from tinymoe.backend import keras, tf  # noqa: F401,E402  (sets TF_USE_LEGACY_KERAS first)
from tinymoe import export, layers, models, optimize  # noqa: E402
from tinymoe.profile import count_macs, profile  # noqa: E402

__all__ = ["count_macs", "export", "layers", "models", "optimize", "profile"]
