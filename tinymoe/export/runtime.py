"""Running converted models: the real TFLite Micro interpreter, and LiteRT for comparison."""

import numpy as np


def quantize(x, scale, zero_point, dtype=np.int8):
    """Float values to integers with a tensor's scale and zero point (rounded, clipped).

    Rounds halves away from zero, in float32, as TFLite's QUANTIZE kernel and the firmware
    app (``lround(pixel / kInputScale)``) do, so all three give the same int8 image.

    Example:
        >>> quantize([0.5, -1.0, 0.025], scale=0.01, zero_point=0)
        array([  50, -100,    3], dtype=int8)
    """
    info = np.iinfo(dtype)
    ratio = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = np.sign(ratio) * np.floor(np.abs(ratio) + np.float32(0.5)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q, scale, zero_point):
    """Integers back to floats with a tensor's scale and zero point.

    Example:
        >>> dequantize([50, -100], scale=0.01, zero_point=0)
        array([ 0.5, -1. ], dtype=float32)
    """
    return (np.asarray(q, dtype=np.float32) - zero_point) * scale


def _scale_zero_point(details):
    params = details["quantization_parameters"]
    return float(params["scales"][0]), int(params["zero_points"][0])


def _run(interpreter_call, input_details, output_details, x, quantized_input, dequantize_out):
    """Runs one image at a time through an interpreter call and stacks the outputs."""
    x = np.asarray(x)
    expected = tuple(int(d) for d in input_details["shape"][1:])
    if x.shape == expected:
        x = x[None]
    if tuple(x.shape[1:]) != expected:
        raise ValueError(f"The model takes images of shape {expected}, got an input of shape "
                         f"{x.shape}.")
    in_scale, in_zero = _scale_zero_point(input_details)
    out_scale, out_zero = _scale_zero_point(output_details)
    outputs = []
    for image in x:
        q = image.astype(np.int8) if quantized_input else quantize(image, in_scale, in_zero)
        outputs.append(interpreter_call(q[None])[0])
    outputs = np.stack(outputs)
    return dequantize(outputs, out_scale, out_zero) if dequantize_out else outputs


def tflm_invoke(tflite_bytes, x, arena_size=None, quantized_input=False, dequantize_output=True):
    """Runs a full-int8 model in the TFLite Micro interpreter (``tflite_micro``).

    Args:
        tflite_bytes: the ``.tflite`` model.
        x: one image ``[H, W, C]`` or a batch ``[B, H, W, C]`` of float pixel values (quantised
            with the input tensor's scale and zero point), or of int8 values when
            ``quantized_input`` is True.
        arena_size: tensor arena in bytes; None lets the interpreter choose (10x the model).
        quantized_input: the input is already int8.
        dequantize_output: return float outputs; else the raw int8 outputs.

    Returns:
        numpy array ``[B, ...]``, one row per image.

    Example:
        >>> logits = tflm_invoke(tflite_bytes, images[:4])
    """
    from tflite_micro.python.tflite_micro import runtime

    kwargs = {} if arena_size is None else {"arena_size": int(arena_size)}
    interpreter = runtime.Interpreter.from_bytes(bytes(tflite_bytes), **kwargs)

    def call(q):
        interpreter.set_input(q, 0)
        interpreter.invoke()
        return np.array(interpreter.get_output(0))

    return _run(call, interpreter.get_input_details(0), interpreter.get_output_details(0), x,
                quantized_input, dequantize_output)


def litert_invoke(tflite_bytes, x, quantized_input=False, dequantize_output=True,
                  reference_kernels=True):
    """Runs a full-int8 model in LiteRT (``ai_edge_litert``), to cross-check TFLite Micro.

    Args:
        reference_kernels: use LiteRT's reference kernels, from which TFLite Micro's are
            ported; they agree with TFLite Micro bit for bit. LiteRT's optimised kernels
            (False: about 4x faster; without the XNNPACK delegate, whose allocation aborts
            on some int8 mixture-of-experts graphs) round some products differently (1 LSB
            per op), which adds up over a deep model.
        Other arguments as :func:`tflm_invoke`.

    Example:
        >>> logits = litert_invoke(tflite_bytes, images[:4])
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (OpResolverType.BUILTIN_REF if reference_kernels
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter = Interpreter(model_content=bytes(tflite_bytes),
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]

    def call(q):
        interpreter.set_tensor(input_details["index"], q)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(output_details["index"]))

    return _run(call, input_details, output_details, x, quantized_input, dequantize_output)


def op_names(tflite_bytes):
    """The builtin op names of a ``.tflite`` model, in execution order.

    Example:
        >>> op_names(tflite_bytes)[:2]
        ['CONV_2D', 'LOGISTIC']
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite_bytes))
    return [op["op_name"] for op in interpreter._get_ops_details()]
