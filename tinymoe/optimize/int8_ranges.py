"""Calibrating a QAT model to its int8 model: every int8 point takes the scale and zero point
of the tensor it stands for in the converted model (see :mod:`tinymoe.layers.int8`)."""

import contextlib

import numpy as np

from tinymoe.backend import keras, tf
from tinymoe.layers.int8 import (FIXED_RANGE, Int8Points, is_fixed, observe_int8_ranges,
                                 point_ops, reset_int8_ranges, set_int8_range)
from tinymoe.optimize.quantize import _tfmot


def calibrate_int8_ranges(qat_model, images):
    """Gives a QAT model the int8 quantisation of its converted model, tensor by tensor, and
    returns that converted model.

    First every range is observed as int8 calibration does (the minimum and maximum of each
    tensor over ``images``, batch 1, kernels at their quantised values, no activation
    quantised); then the model is converted with those images, and each int8 point takes the
    scale and zero point of the tensor it stands for. Points and tensors are lined up in
    execution order, each point against an op of its kind: a point the converter did not
    quantise, or a quantised tensor without a point, is an error. (The converter gives some
    tensors their consumer's range, e.g. a RELU feeding a MUL; taking its ranges makes the
    QAT model quantise as the int8 model does, whatever its rules.)

    Args:
        qat_model: from :func:`quantize_aware` (trained).
        images: array ``[N, H, W, C]``, the representative images of the conversion.

    Returns:
        bytes: the int8 ``.tflite`` model (as :func:`tinymoe.export.to_tflite` of
        ``qat_model`` on all ``images``).

    Raises:
        ValueError: the QAT model's points and the int8 model's tensors do not line up.

    Example:
        >>> tflite_bytes = calibrate_int8_ranges(qat, x_train[:200])
    """
    from tinymoe.export import to_tflite

    images = np.asarray(images, np.float32)
    quant = _tfmot().quantization.keras
    wrappers = [layer for layer in qat_model.layers if isinstance(layer, quant.QuantizeWrapper)]
    for wrapper in wrappers:
        reset_int8_ranges(wrapper.layer)
        # Kernel ranges from the kernels as they are (the last training step set them from
        # the kernels before its update), as strip_quantization and the converter take them.
        for weight, quantizer, variables in getattr(wrapper, "_weight_vars", []):
            quantizer(weight, True, weights=variables)
    tapped = [w for w in wrappers if w._output_quantizers]  # Keras layers: tfmot's ranges
    inputs = [layer for layer in qat_model.layers if getattr(layer, "quantizer_vars", None)]
    with observe_int8_ranges(), _observed_outputs(tapped) as ranges, _unquantised(inputs):
        for image in images:
            qat_model(image[None], training=False)
    for wrapper in tapped:
        wrapper._output_quantizer_vars["min_var"].assign(min(ranges[wrapper][0], 0.0))
        wrapper._output_quantizer_vars["max_var"].assign(max(ranges[wrapper][1], 0.0))
    for layer in inputs:  # tfmot's input quantiser: the int8 input's range
        layer.quantizer_vars["min_var"].assign(min(float(images.min()), 0.0))
        layer.quantizer_vars["max_var"].assign(max(float(images.max()), 0.0))
    tflite_bytes = to_tflite(qat_model, images, num_samples=len(images), verify=False)
    _adopt_int8_ranges(qat_model, tflite_bytes, images[0], tapped)
    return tflite_bytes


# Ops whose int8 output keeps its input's quantisation (they move or pick values), and CAST
# (an int8 count in the dispatch, not a quantised tensor): no int8 point stands for them.
SAME_SCALE_OPS = ("RESHAPE", "STRIDED_SLICE", "TRANSPOSE", "PAD", "MIRROR_PAD",
                  "SPACE_TO_DEPTH", "GATHER", "CONCATENATION", "REDUCE_MAX", "CAST")


def quantising_ops(tflite_bytes):
    """``(op, output tensor name, scale, zero point)`` of every op of an int8 model that
    quantises a new tensor, in execution order.

    Example:
        >>> quantising_ops(tflite_bytes)[0][0]
        'CONV_2D'
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=tflite_bytes,  # no delegate: every op listed
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        out = tensors[op["outputs"][0]]
        if out["dtype"] == np.int8 and op["op_name"] not in SAME_SCALE_OPS:
            scale, zero = out["quantization"]
            found.append((op["op_name"], out["name"], float(scale), int(zero)))
    return found


def _adopt_int8_ranges(qat_model, tflite_bytes, image, tapped):
    ops = quantising_ops(tflite_bytes)
    points = _traced_points(qat_model, image)
    for position, (layer, name) in enumerate(points):  # all checked before any is set
        op, tensor = ops[position][:2] if position < len(ops) else (None, None)
        if op not in point_ops(name):
            # E.g. an untrained layer norm (gamma 1, beta 0), whose last MUL and ADD the
            # converter drops.
            raise ValueError(f"The int8 point {layer.name}/{name} lines up with "
                             f"{op or 'no tensor'} ({tensor}); the QAT model does not mirror "
                             "the int8 graph (train it before calibrating).")
    for (layer, name), (_, _, scale, zero) in zip(points, ops):
        if not is_fixed(name):
            set_int8_range(layer, name, (-128 - zero) * scale, (127 - zero) * scale)
    # Then the Keras layers at the end (pooling, classifier) in order; dropout has no op.
    rest = iter(ops[len(points):])
    last = None
    for wrapper in tapped:
        if isinstance(wrapper.layer, (keras.layers.GlobalAveragePooling2D, keras.layers.Dense)):
            last = next(rest, None)
            if last is None:
                raise ValueError(f"No int8 tensor for {wrapper.layer.name}.")
        elif not (isinstance(wrapper.layer, keras.layers.Dropout) and last is not None):
            continue
        _, _, scale, zero = last
        wrapper._output_quantizer_vars["min_var"].assign((-128 - zero) * scale)
        wrapper._output_quantizer_vars["max_var"].assign((127 - zero) * scale)
    extra = list(rest)
    if extra:
        raise ValueError(f"{len(extra)} int8 tensors have no int8 point in the QAT model, "
                         f"the first {extra[0][0]} ({extra[0][1]}).")


def _traced_points(qat_model, image):
    """``(layer, point)`` of every int8 point, in the order one image passes them."""
    trace, original = [], Int8Points.int8

    def traced(layer, name, x, training=None, observed=None):
        if layer._int8_ranges is not None:
            trace.append((layer, name))
        return original(layer, name, x, training, observed)

    Int8Points.int8 = traced
    try:
        qat_model(np.asarray(image, np.float32)[None], training=False)
    finally:
        Int8Points.int8 = original
    return trace


def int8_point_trace(qat_model, image):
    """The int8 points of a QAT model's layers in the order one image passes them, with the
    int8 quantisation each stands for: ``(layer name, point, scale, zero point)`` (TFLite's
    asymmetric int8 of the point's range, zero included; 1/256 and -128 for sigmoid and
    softmax). Compare with :func:`quantising_ops` of the converted model, op by op.

    Example:
        >>> int8_point_trace(qat, x_train[0])[:1]
        [('stem', 'conv', 0.0063, 3)]
    """
    trace = []
    for layer, name in _traced_points(qat_model, image):
        if is_fixed(name):
            low, high = FIXED_RANGE
        else:
            low, high = (float(v) for v in layer._int8_ranges[name].numpy()[:2])
        low, high = min(low, 0.0), max(high, 0.0)
        scale = (high - low) / 255.0
        zero = int(np.clip(np.round(-128 - low / scale), -128, 127)) if scale else 0
        trace.append((layer.name, name, scale, zero))
    return trace


@contextlib.contextmanager
def _unquantised(input_layers):
    """Within: tfmot's input quantisers pass the images through."""
    saved = [(layer, layer.quantizer) for layer in input_layers]
    for layer, _ in saved:
        layer.quantizer = None
    try:
        yield
    finally:
        for layer, quantizer in saved:
            layer.quantizer = quantizer


@contextlib.contextmanager
def _observed_outputs(wrappers):
    """Within: ``wrappers`` hand on their outputs unquantised, and ``ranges[wrapper]`` is
    the (minimum, maximum) of their outputs so far."""
    ranges, saved = {}, {}

    def observing(wrapper, call):
        def observed_call(inputs, training=None):
            value = call(inputs, training=training)
            low, high = ranges.get(wrapper, (np.inf, -np.inf))
            ranges[wrapper] = (min(low, float(tf.reduce_min(value))),
                               max(high, float(tf.reduce_max(value))))
            return value
        return observed_call

    for wrapper in wrappers:
        saved[wrapper] = (wrapper._output_quantizers, wrapper.call)
        wrapper._output_quantizers = []
        wrapper.call = observing(wrapper, wrapper.call)
    try:
        yield ranges
    finally:
        for wrapper, (quantizers, call) in saved.items():
            wrapper._output_quantizers = quantizers
            wrapper.call = call
