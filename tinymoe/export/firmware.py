"""Firmware files for TensorFlow Lite Micro: the model as a C array, its op resolver,
its settings and its labels. Every number in them comes from the model."""

import math
import os
import re
import shutil
import tempfile

from tinymoe import __version__
from tinymoe.export.convert import strip_for_device
from tinymoe.export.report import smallest_arena

FILES = ("model_data.h", "model_data.cc", "op_resolver.h", "model_settings.h", "labels.h",
         "labels.cc", "tensor_names.txt")

# MicroMutableOpResolver method names that are not the CamelCase of the builtin op name.
_RESOLVER_NAMES = {"BATCH_MATMUL": "BatchMatMul", "CUMSUM": "CumSum",
                   "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}


def resolver_method(op_name):
    """``"DEPTHWISE_CONV_2D"`` -> ``"AddDepthwiseConv2D"`` (MicroMutableOpResolver).

    Example:
        >>> resolver_method("CONV_2D")
        'AddConv2D'
    """
    name = _RESOLVER_NAMES.get(op_name) or "".join(
        part if part[:1].isdigit() else part[:1] + part[1:].lower()
        for part in op_name.split("_"))
    return f"Add{name}"


def _identifier(name):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"The model name must be a C identifier (letters, digits, _), got "
                         f"{name!r}.")
    return name


def _c_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _header(text, guard):
    return f"#ifndef {guard}\n#define {guard}\n\n{text}\n#endif  // {guard}\n"


def _tensor_params(tensor):
    return float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])


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


def arena_with_margin(measured, margin=0.1):
    """``measured`` plus ``margin`` (a share), rounded up to 1 KiB.

    Example:
        >>> arena_with_margin(100_000, 0.1)
        110592
    """
    return int(math.ceil(measured * (1.0 + margin) / 1024.0) * 1024)


PYTHON_ARENA = "the TFLite Micro Python interpreter (64-bit host: an upper bound for an MCU)"


def firmware_sources(tflite_bytes, name="model", labels=None, arena_bytes=None,
                     arena_margin=0.1, arena_source=PYTHON_ARENA, strip=True, notes=()):
    """The text of every firmware file, as a dict ``file name -> text``.

    Args:
        tflite_bytes: the full-int8 ``.tflite`` model.
        name: C identifier used in ``g_<name>_model_data``.
        labels: class names, one per output; None gives ``class_0, class_1, ...``.
        arena_bytes: the measured smallest arena; None measures it (:func:`smallest_arena`).
        arena_margin: share added to the measured arena in ``kTensorArenaSize``.
        arena_source: where ``arena_bytes`` was measured, for the comment beside it.
        strip: embed the model as :func:`tinymoe.export.strip_for_device` leaves it (no
            names or metadata, one zero point per weight tensor: about 12% less flash,
            same output in TFLite Micro); the names go to ``tensor_names.txt``.
        notes: lines for a comment at the end of ``model_settings.h``, e.g. the calibrated
            expert capacities (:meth:`tinymoe.export.CapacityReport.lines`).

    Example:
        >>> sources = firmware_sources(tflite_bytes, name="birds", labels=class_names)
        >>> sorted(sources)[:2]
        ['labels.cc', 'labels.h']
    """
    name = _identifier(name)
    original = bytes(tflite_bytes)
    data, names = strip_for_device(original)
    if not strip:
        data = original
    inputs, outputs, ops = model_facts(original)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"The firmware template takes one input and one output; the model "
                         f"has {len(inputs)} and {len(outputs)}.")
    shape = [int(d) for d in inputs[0].shape]
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"The model input must be one image [1, H, W, C], got {shape}.")
    num_classes = int(outputs[0].shape[-1])
    if labels is None:
        labels = [f"class_{i}" for i in range(num_classes)]
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} outputs.")
    measured = int(arena_bytes) if arena_bytes else smallest_arena(data)
    in_scale, in_zero = _tensor_params(inputs[0])
    out_scale, out_zero = _tensor_params(outputs[0])
    stamp = f"// Generated by tinymoe {__version__} from the model itself; do not edit.\n"
    guard = f"TINYMOE_{name.upper()}_"
    array = f"g_{name}_model_data"

    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    sources = {
        "model_data.h": stamp + _header(
            f"// The .tflite flatbuffer ({len(data):,} bytes"
            + (f"; stripped for the device from {len(original):,}: tensor names are in "
               "tensor_names.txt" if strip else "") + "), 16-byte aligned as TFLite Micro "
            f"requires.\nextern const unsigned char {array}[];\n"
            f"extern const unsigned int {array}_size;\n\n"
            f"#define TINYMOE_MODEL_DATA {array}\n#define TINYMOE_MODEL_DATA_SIZE {array}_size\n",
            guard + "MODEL_DATA_H_"),
        "model_data.cc": stamp + '#include "model_data.h"\n\n'
            f"alignas(16) const unsigned char {array}[] = {{\n    "
            + ",\n    ".join(rows) + "\n};\n"
            f"const unsigned int {array}_size = {len(data)};\n",
        "op_resolver.h": stamp + _header(
            '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
            f"// The {len(ops)} op types this model uses, and no others.\n"
            f"constexpr int kNumOpTypes = {len(ops)};\n"
            "using ModelOpResolver = tflite::MicroMutableOpResolver<kNumOpTypes>;\n\n"
            "// Registers every op of the model; kTfLiteError if one could not be added.\n"
            "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {\n"
            + "".join(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) "
                      "return kTfLiteError;\n" for op in ops)
            + "  return kTfLiteOk;\n}\n", guard + "OP_RESOLVER_H_"),
        "model_settings.h": stamp + _header(
            f"// Input: one int8 image, height x width x channels.\n"
            f"constexpr int kInputHeight = {shape[1]};\n"
            f"constexpr int kInputWidth = {shape[2]};\n"
            f"constexpr int kInputChannels = {shape[3]};\n"
            f"constexpr int kInputSize = {shape[1] * shape[2] * shape[3]};\n"
            "// real = scale * (q - zero_point). The model takes pixel values in [0, 255].\n"
            f"constexpr float kInputScale = {in_scale!r}f;\n"
            f"constexpr int kInputZeroPoint = {in_zero};\n"
            f"constexpr float kOutputScale = {out_scale!r}f;\n"
            f"constexpr int kOutputZeroPoint = {out_zero};\n"
            f"constexpr int kNumClasses = {num_classes};\n"
            f"// Arena measured in {arena_source}:\n"
            f"// {measured} bytes, plus a margin of {arena_margin:.0%}.\n"
            f"constexpr int kTensorArenaSize = {arena_with_margin(measured, arena_margin)};\n"
            + "".join(f"// {line}\n" for note in notes for line in str(note).splitlines()),
            guard + "MODEL_SETTINGS_H_"),
        "labels.h": stamp + _header(
            '#include "model_settings.h"\n\n// The class name of each output, in order.\n'
            "extern const char* const kLabels[kNumClasses];\n", guard + "LABELS_H_"),
        "labels.cc": stamp + '#include "labels.h"\n\nconst char* const kLabels[kNumClasses] = {\n'
            + "".join(f"    {_c_string(label)},\n" for label in labels) + "};\n",
    }
    sources["tensor_names.txt"] = "".join(
        f"{subgraph} {index} {tensor}\n" for subgraph, tensors in enumerate(names["tensors"])
        for index, tensor in enumerate(tensors))
    return sources


def write_firmware(tflite_bytes, out_dir, name="model", labels=None, arena_bytes=None,
                   arena_margin=0.1, arena_source=PYTHON_ARENA, strip=True, notes=()):
    """Writes the firmware files of :func:`firmware_sources` into ``out_dir``.

    All files are generated first, then moved into place one by one with ``os.replace``,
    so an error leaves ``out_dir`` as it was. The files depend on the model alone (no dates):
    exporting twice gives identical bytes.

    Returns:
        list of the written paths.

    Example:
        >>> write_firmware(open("model.tflite", "rb").read(), "firmware/model",
        ...                labels=["robin", "wren"])
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"Output path {out_dir!r} is a file, not a folder.")
    sources = firmware_sources(tflite_bytes, name, labels, arena_bytes, arena_margin,
                               arena_source, strip, notes)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-firmware-", dir=parent)
    try:
        for file_name, text in sources.items():
            with open(os.path.join(staging, file_name), "w", newline="\n") as handle:
                handle.write(text)
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for file_name in sources:
            target = os.path.join(out_dir, file_name)
            os.replace(os.path.join(staging, file_name), target)
            paths.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
