"""Weight compression with TensorFlow Lite Micro's own look-up tables (LUT) and DECODE op.

Each selected int8 weight tensor is binned, per output channel, to at most ``2**bits``
values (one-dimensional k-means on the channel's int8 values), then TFLM's compressor
(``tflite_micro``'s ``compression.compress``) stores it as ``bits``-bit indices into a
per-channel value table and inserts a DECODE op before its consumer. The DECODE kernel is
part of every TFLM build; the decoded weights live in the arena while their op runs.
"""

import numpy as np

GROUPS = ("experts", "all")
_WEIGHTED_OPS = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}
_INT8 = 9  # tflite.TensorType.INT8


def _selected(model, group):
    """(tensor index, channel axis) of each int8 weight tensor in ``group``, read from the
    flatbuffer object ``model``."""
    from tensorflow.lite.tools import flatbuffer_utils

    subgraph = model.subgraphs[0]
    chosen = {}
    for op in subgraph.operators:
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        if name not in _WEIGHTED_OPS:
            continue
        weight = subgraph.tensors[op.inputs[1]]
        if weight.type != _INT8:
            continue
        # The experts are FULLY_CONNECTED; the router (a 1x1 CONV_2D) stays as it is.
        if group == "experts" and (name != "FULLY_CONNECTED"
                                   or b"/moe/" not in (weight.name or b"")):
            continue
        chosen[int(op.inputs[1])] = _WEIGHTED_OPS[name]
    return chosen


def _packed_bytes(shape, axis, bits):
    """Bytes of a LUT-compressed int8 tensor: packed indices plus a table per channel."""
    return int(np.ceil(np.prod(shape) * bits / 8)) + int(shape[axis]) * 2 ** bits


def bin_channels(values, levels, iterations=20):
    """Each slice ``values[c]`` (int8) replaced by its nearest of at most ``levels`` int8
    centres, found by one-dimensional k-means started from the slice's quantiles.

    Example:
        >>> bin_channels(np.array([[-9, -8, 0, 1, 7, 9]], np.int8), 2)
        array([[-8, -8,  4,  4,  4,  4]], dtype=int8)
    """
    out = np.empty_like(values)
    for c, row in enumerate(values.astype(np.float64)):
        flat = row.reshape(-1)
        unique = np.unique(flat)
        if len(unique) <= levels:
            out[c] = values[c]
            continue
        centres = np.quantile(flat, (np.arange(levels) + 0.5) / levels)
        for _ in range(iterations):
            nearest = np.argmin(np.abs(flat[:, None] - centres[None, :]), axis=1)
            for k in range(levels):
                members = flat[nearest == k]
                if len(members):
                    centres[k] = members.mean()
        centres = np.clip(np.round(centres), -127, 127)
        nearest = np.argmin(np.abs(flat[:, None] - centres[None, :]), axis=1)
        out[c] = centres[nearest].reshape(row.shape).astype(np.int8)
    return out


def lut_compress(tflite_bytes, group="experts", bits=4):
    """LUT-compresses the int8 weights of ``group`` to ``bits``-bit per-channel indices.

    Args:
        tflite_bytes: a full-int8 ``.tflite`` model (names intact: "experts" finds the MoE
            layers' weights by name).
        group: "experts" (the FULLY_CONNECTED weights of the MoE layers) or "all" (every
            CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED weight).
        bits: index width, 1 to 7.

    Returns:
        (compressed ``bytes`` with DECODE ops, dict: ``tensors`` compressed, ``weight_bytes``
        before, ``binned``: the uncompressed model with the binned weights, which TFLM must
        run to the same output).

    Example:
        >>> compressed, info = lut_compress(tflite_bytes, "experts", bits=4)
        >>> len(compressed) < len(tflite_bytes)
        True
    """
    from tensorflow.lite.tools import flatbuffer_utils
    from tflite_micro.tensorflow.lite.micro.compression import spec
    from tflite_micro.tensorflow.lite.micro.compression.compress import compress

    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}.")
    if not 1 <= int(bits) <= 7:
        raise ValueError(f"bits must be 1 to 7 (TFLM's LUT index widths), got {bits}.")
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    tensors = model.subgraphs[0].tensors
    chosen = _selected(model, group)
    # A value table per channel: a small tensor (a stem, a depthwise kernel) would grow.
    chosen = {index: axis for index, axis in chosen.items()
              if _packed_bytes(tensors[index].shape, axis, int(bits)) < np.prod(
                  tensors[index].shape)}
    if not chosen:
        raise ValueError(f"The model has no int8 weights in group {group!r} that "
                         f"{bits}-bit tables would shrink"
                         + (" (no MoE layer?)." if group == "experts" else "."))
    weight_bytes = 0
    for index, axis in chosen.items():
        tensor = tensors[index]
        buffer = model.buffers[tensor.buffer]
        shape = tuple(int(d) for d in tensor.shape)
        values = np.frombuffer(bytes(buffer.data), np.int8).reshape(shape)
        weight_bytes += values.size
        binned = np.moveaxis(bin_channels(np.moveaxis(values, axis, 0), 2 ** int(bits)), 0, axis)
        buffer.data = np.ascontiguousarray(binned).view(np.uint8).reshape(-1)
    binned_bytes = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    specs = [spec.Tensor(subgraph=0, tensor=index, compression=[spec.LookUpTableCompression(
        index_bitwidth=int(bits), mode=spec.PerChannel(axis=axis))])
        for index, axis in sorted(chosen.items())]
    compressed = bytes(compress(binned_bytes, specs))
    return compressed, {"tensors": len(chosen), "weight_bytes": weight_bytes,
                        "binned": binned_bytes}
