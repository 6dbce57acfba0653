"""From a trained Keras model to int8 TFLite that runs in TensorFlow Lite Micro."""

from tinymoe.export.convert import to_tflite
from tinymoe.export.runtime import (
    dequantize, litert_invoke, op_names, quantize, tflm_invoke)

__all__ = ["dequantize", "litert_invoke", "op_names", "quantize", "tflm_invoke", "to_tflite"]
