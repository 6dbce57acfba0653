"""Reading ``.tflite`` files: the bytes of a file, checked, and what a model takes, gives and
runs, read from the flatbuffer itself (so that models LiteRT cannot load, stripped or
LUT-compressed, work too). Every command that takes a ``.tflite`` reads it here."""

import os


def read_tflite(path):
    """The bytes of a ``.tflite`` file, checked to be a TFLite flatbuffer.

    Example:
        >>> tflite_bytes = read_tflite("runs/opt/model.tflite")
    """
    if not os.path.isfile(path):
        raise ValueError(f"Model file {path!r} does not exist.")
    with open(path, "rb") as handle:
        data = handle.read()
    if data[4:8] != b"TFL3":
        raise ValueError(f"{path!r} is not a .tflite flatbuffer.")
    return data


# Custom ops that TFLite Micro ships, by custom code -> the name resolver_method() takes.
_CUSTOM_OPS = {"TFLM_DECODE": "DECODE"}


def model_facts(tflite_bytes):
    """Inputs, outputs (flatbuffer tensors) and sorted op names of a model, read from the
    flatbuffer itself, so that models LiteRT cannot load (LUT-compressed with DECODE ops,
    stripped) work too.

    Example:
        >>> inputs, outputs, ops = model_facts(tflite_bytes)
        >>> list(inputs[0].shape), ops[:2]
        ([1, 128, 128, 3], ['ADD', 'CONV_2D'])
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    subgraph = model.subgraphs[0]
    ops = set()
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        custom = code.customCode.decode() if code.customCode else None
        if custom is not None and custom not in _CUSTOM_OPS:
            raise ValueError(f"The model uses the custom op {custom!r}, which TFLite Micro "
                             "does not ship; the firmware cannot register it.")
        ops.add(_CUSTOM_OPS[custom] if custom else
                flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    return ([subgraph.tensors[i] for i in subgraph.inputs],
            [subgraph.tensors[i] for i in subgraph.outputs], sorted(ops))
