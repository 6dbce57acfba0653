"""From a trained Keras model to int8 TFLite that runs in TensorFlow Lite Micro."""

from tinymoe.export.check import TflmCheck, check_tflm
from tinymoe.export.convert import to_tflite
from tinymoe.export.runtime import (
    dequantize, litert_invoke, op_names, quantize, tflm_invoke)

__all__ = ["TflmCheck", "check_tflm", "dequantize", "litert_invoke", "op_names", "quantize", "tflm_invoke", "to_tflite"]
