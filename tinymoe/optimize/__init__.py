"""Pruning and quantisation-aware training (tfmot) for tinymoe models."""

from tinymoe.optimize.int8_ranges import calibrate_int8_ranges, int8_point_trace, quantising_ops
from tinymoe.optimize.prune import prune, pruning_callbacks, sparsity_report, strip_pruning
from tinymoe.optimize.quantize import (
    ChannelQuantizer, LayerQuantizeConfig, is_quantize_aware, quantize_aware, quantize_scope,
    strip_quantization, unquantized_layers)

__all__ = [
    "ChannelQuantizer", "LayerQuantizeConfig", "calibrate_int8_ranges", "int8_point_trace",
    "is_quantize_aware", "prune", "pruning_callbacks", "quantising_ops", "quantize_aware",
    "quantize_scope", "sparsity_report", "strip_pruning", "strip_quantization",
    "unquantized_layers",
]
