"""Full-int8 TFLite conversion for TensorFlow Lite Micro."""

import warnings

import numpy as np

from tinymoe.backend import quiet_native_logs, tf
from tinymoe.export.check import TflmUnsupportedError, check_tflm


def to_tflite(model, representative_data, num_samples=100, verify=True):
    """Converts a Keras model to a full-int8 TFLite flatbuffer for TFLite Micro.

    int8 input and output, batch 1, ``TFLITE_BUILTINS_INT8`` only. The graph is traced from
    a fixed batch-1 signature, so no SHAPE or REDUCE_PROD ops (which TFLite Micro lacks)
    are left in it. A QAT model (from :func:`tinymoe.optimize.quantize_aware`) is converted
    with the weights it trained with (see :func:`tinymoe.optimize.strip_quantization`).

    Args:
        model: a Keras model with one image input, float or quantisation-aware.
        representative_data: images ``[N, H, W, C]`` (array-like) or a ``tf.data.Dataset`` of
            images or ``(images, labels)`` batches, used to calibrate the int8 ranges.
        num_samples: int, how many images to calibrate on.
        verify: load and invoke the result in the TFLite Micro interpreter (in a child
            process) and raise :class:`TflmUnsupportedError` if it cannot run there.

    Returns:
        bytes: the ``.tflite`` model.

    Raises:
        TflmUnsupportedError: the model needs ops TFLite Micro lacks (listed by name), or the
            interpreter failed on it.

    Example:
        >>> tflite_bytes = to_tflite(model, x_train[:100])
        >>> open("model.tflite", "wb").write(tflite_bytes)
    """
    from tinymoe.optimize.quantize import is_quantize_aware, strip_quantization

    if is_quantize_aware(model):
        model = strip_quantization(model)
    shape = [1] + [int(d) for d in model.input_shape[1:]]
    samples = _calibration_images(representative_data, shape[1:], num_samples)
    from tinymoe.data import warn_if_normalised

    warn_if_normalised(samples, "to_tflite (calibration images)")
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    # Without the trackable object the converter freezes the captured variables directly:
    # 2 s instead of 40 s for mobilevit_v2_050 on 2 cores, the same flatbuffer ops.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # Printed for every int8-input model; the input statistics come from calibration.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        with quiet_native_logs():  # the quantiser's "fully_quantize: 0, ..." line
            tflite_bytes = converter.convert()
    tflite_bytes = floor_softmax_scales(tflite_bytes)
    if verify:
        check = check_tflm(tflite_bytes)
        if not check.ok:
            raise TflmUnsupportedError(
                f"The converted model does not run in TFLite Micro: {check.message}",
                check.missing_ops)
    return tflite_bytes


# TFLite Micro's int8 SOFTMAX keeps its input differences in fixed point with this many
# integer bits (kScaledDiffIntegerBits in softmax_common.cc) and needs the multiplier
# beta x input scale x 2^(31 - bits) to be above 1 (QuantizeMultiplierGreaterThanOne, a
# TFLITE_CHECK: below it, the interpreter aborts while preparing the op).
_SOFTMAX_INTEGER_BITS = 5
_SOFTMAX = 25
# Ops that pass int8 values through unchanged: their input and output share one scale.
_SAME_SCALE_OPS = {22: "RESHAPE", 39: "TRANSPOSE", 43: "SQUEEZE", 70: "EXPAND_DIMS"}


def floor_softmax_scales(tflite_bytes):
    """Raises the input scale of each int8 SOFTMAX to what TFLite Micro can take.

    Calibration gives a softmax input a scale of a 255th of the range it saw. Logits that
    barely vary (an untrained model, images in [0, 1] or constant, a near-uniform
    attention) give a scale under 2^-26, at which TFLite Micro's SOFTMAX aborts the
    whole program (see ``_SOFTMAX_INTEGER_BITS``). Such logits span less than
    255 x 2^-25 (8e-6), so their softmax is uniform to within 1e-5, a thousandth of one
    int8 output step (1/256): the scale is raised to 2^-25 / beta (twice the least TFLM
    takes), the zero point kept (every value still fits: it only gets coarser), and the
    same on every tensor the input shares its scale with through RESHAPE-like ops, so
    that the op producing it requantises to the new scale. Models without such a softmax
    are returned unchanged, byte for byte.

    Returns:
        the ``.tflite`` bytes.

    Example:
        >>> tflite_bytes = floor_softmax_scales(converter.convert())
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    changed = False
    for subgraph in model.subgraphs:
        producer, consumers = {}, {}
        for op in subgraph.operators:
            for index in op.outputs:
                producer[index] = op
            for index in op.inputs:
                consumers.setdefault(index, []).append(op)
        for op in subgraph.operators:
            if codes[op.opcodeIndex] != _SOFTMAX:
                continue
            beta = float(getattr(op.builtinOptions, "beta", 1.0) or 1.0)
            quantization = subgraph.tensors[op.inputs[0]].quantization
            if quantization is None or quantization.scale is None:
                continue  # a float softmax
            floor = 2.0 ** -(30 - _SOFTMAX_INTEGER_BITS) / beta
            if float(quantization.scale[0]) >= floor:
                continue
            for index in _same_scale_group(op.inputs[0], producer, consumers, codes):
                subgraph.tensors[index].quantization.scale = np.array([floor], np.float32)
            changed = True
    if not changed:
        return tflite_bytes
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _same_scale_group(start, producer, consumers, codes):
    """Tensor ``start`` and those joined to it through ops that keep the int8 values."""
    group, todo = {start}, [start]
    while todo:
        index = todo.pop()
        linked = []
        op = producer.get(index)
        if op is not None and codes[op.opcodeIndex] in _SAME_SCALE_OPS:
            linked.append(op.inputs[0])
        for op in consumers.get(index, ()):
            if codes[op.opcodeIndex] in _SAME_SCALE_OPS:
                linked.extend(op.outputs)
        for other in linked:
            if other not in group:
                group.add(other)
                todo.append(other)
    return group


def _calibration_images(data, image_shape, num_samples):
    """Up to ``num_samples`` float32 images of ``image_shape`` from arrays or a dataset."""
    if isinstance(data, tf.data.Dataset):
        images = []
        for element in data:
            batch = element[0] if isinstance(element, (tuple, list)) else element
            batch = np.asarray(batch, dtype=np.float32)
            images.extend(batch if batch.ndim == len(image_shape) + 1 else batch[None])
            if len(images) >= num_samples:
                break
        images = np.stack(images[:num_samples]) if images else np.zeros((0, *image_shape))
    else:
        images = np.asarray(data, dtype=np.float32)[:num_samples]
    if images.ndim != len(image_shape) + 1 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"Representative data must be images of shape {tuple(image_shape)}, "
                         f"got an array of shape {images.shape}.")
    if len(images) == 0:
        raise ValueError("Representative data is empty: int8 calibration needs images.")
    return images.astype(np.float32)


def strip_for_device(tflite_bytes):
    """The model without what a device never reads: tensor and subgraph names, the model
    description, signatures and metadata (conversion metadata, minimum runtime version); and
    each per-channel zero-point array whose values are all equal (all weights and biases: 0)
    cut to one value, an int64 per channel less, which TFLite Micro reads as the same array
    (``micro_allocator.cc``: "zero point arrays for weights can be reduced to a single
    value"). LiteRT's interpreter refuses that form; TFLite Micro is what runs it.

    TFLite Micro runs the stripped model exactly as the original (the firmware tests check
    it byte for byte on the host and on Cortex-M3). The names are returned for a side file.

    Returns:
        (stripped ``bytes``, ``names``: dict with ``tensors``, a list of tensor names per
        subgraph, indexed like the model's tensors).

    Example:
        >>> stripped, names = strip_for_device(tflite_bytes)
        >>> len(stripped) < len(tflite_bytes), names["tensors"][0][0]
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    names = {"tensors": [[_text(t.name) for t in subgraph.tensors]
                         for subgraph in model.subgraphs]}
    flatbuffer_utils.strip_strings(model)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            zero_points = getattr(tensor.quantization, "zeroPoint", None)
            if zero_points is not None and len(zero_points) > 1 and len(set(zero_points)) == 1:
                tensor.quantization.zeroPoint = zero_points[:1]
    for entry in model.metadata or ():
        model.buffers[entry.buffer].data = None
    model.metadata = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), names


def _text(name):
    return name.decode() if isinstance(name, bytes) else (name or "")
