"""From a trained Keras model to int8 TFLite that runs in TensorFlow Lite Micro, and the
firmware files that carry it."""

from tinymoe.export.capacity import CapacityReport, calibrate_capacity, capacity_grid
from tinymoe.export.check import TflmCheck, TflmUnsupportedError, check_tflm
from tinymoe.export.convert import strip_for_device, to_tflite
from tinymoe.export.firmware_files import firmware_sources, write_firmware
from tinymoe.export.report import ArenaError, format_report, op_table, report, smallest_arena
from tinymoe.export.tflite_file import model_facts, read_tflite
from tinymoe.export.runtime import (
    dequantize, litert_invoke, op_names, quantize, tflm_invoke)

__all__ = [
    "ArenaError", "CapacityReport", "TflmCheck", "TflmUnsupportedError", "calibrate_capacity",
    "capacity_grid", "check_tflm", "dequantize", "firmware_sources", "format_report",
    "litert_invoke", "model_facts", "op_names", "op_table", "quantize", "read_tflite",
    "report", "smallest_arena", "strip_for_device", "tflm_invoke", "to_tflite",
    "write_firmware",
]
