"""tinymoe: MobileViTv2 with mixtures of experts, trained in Keras, run on microcontrollers."""

from tinymoe.backend import keras, tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from tinymoe import export, layers, models  # noqa: E402
from tinymoe.profile import count_macs, profile  # noqa: E402

__version__ = "0.1.0"
__all__ = ["count_macs", "export", "layers", "models", "profile"]
