"""What a converted model costs on a microcontroller: flash, tensor arena, MACs, ops."""

import collections
import os
import subprocess
import sys
import tempfile

import numpy as np

from tinymoe.export.check import TFLM_CHILD, check_tflm

ARENA_NOTE = ("Arena measured by the TFLite Micro Python interpreter (host, 64-bit): an upper "
              "bound for a 32-bit MCU, where pointers and structs are smaller.")


class ArenaError(ValueError):
    """The tensor arena a model needs does not fit the limit given.

    Example:
        >>> report(tflite_bytes, arena_limit=320 * 1024)  # raises ArenaError if larger
    """


def op_table(tflite_bytes):
    """Every op of a ``.tflite`` model, in execution order, with its MACs.

    MACs are counted for the ops that multiply-accumulate: CONV_2D (output elements x
    kernel height x width x input channels), DEPTHWISE_CONV_2D (output elements x kernel
    height x width), FULLY_CONNECTED (output elements x input features) and BATCH_MATMUL
    (output elements x the shared dimension); every other op counts 0.

    Returns:
        list of dict: ``op``, ``macs``, ``output_shape``.

    Example:
        >>> op_table(tflite_bytes)[0]
        {'op': 'CONV_2D', 'macs': 442368, 'output_shape': [1, 64, 64, 16]}
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite_bytes))
    shapes = {t["index"]: tuple(int(d) for d in t["shape"])
              for t in interpreter.get_tensor_details()}
    rows = []
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        outputs = [i for i in op["outputs"] if i >= 0]
        out_shape = shapes[outputs[0]] if outputs else ()
        out_elements = int(np.prod(out_shape)) if out_shape else 0
        inputs = [i for i in op["inputs"] if i >= 0]
        macs = 0
        if name == "CONV_2D":
            macs = out_elements * int(np.prod(shapes[inputs[1]][1:]))
        elif name == "DEPTHWISE_CONV_2D":
            kh, kw = shapes[inputs[1]][1:3]
            macs = out_elements * kh * kw
        elif name == "FULLY_CONNECTED":
            macs = out_elements * shapes[inputs[1]][-1]
        elif name == "BATCH_MATMUL":
            macs = out_elements * shapes[inputs[0]][-1]
        rows.append({"op": name, "macs": int(macs), "output_shape": list(out_shape)})
    return rows


def weight_bytes(tflite_bytes):
    """Bytes of constant data (weights, biases, quantisation tables) in the flatbuffer.

    Example:
        >>> weight_bytes(tflite_bytes)
        1129357
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    return int(sum(len(buffer.data) for buffer in model.buffers if buffer.data is not None))


def _run_child(args, timeout):
    result = subprocess.run([sys.executable, TFLM_CHILD, *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, check=False)
    return result.stdout.split("\n")


def smallest_arena(tflite_bytes, step=64, timeout=600):
    """The smallest tensor arena in which TFLite Micro allocates and invokes the model.

    Found by bisection to within ``step`` bytes, in child processes (an arena that is too
    small can crash the interpreter rather than raise); a crash counts as too small and the
    search goes on from there. See :data:`ARENA_NOTE` for what the number means on an MCU.

    Args:
        tflite_bytes: the ``.tflite`` model (it must run in TFLite Micro at all).
        step: resolution in bytes.
        timeout: seconds allowed to each child process.

    Returns:
        int: arena bytes.

    Example:
        >>> smallest_arena(tflite_bytes)
        88256
    """
    check = check_tflm(tflite_bytes)
    if not check.ok:
        raise ValueError(f"The model does not run in TFLite Micro: {check.message}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as handle:
            handle.write(bytes(tflite_bytes))
        high = 64 * 1024
        while not check_tflm(tflite_bytes, arena_size=high).ok:
            if high > 256 * 1024 * 1024:
                raise ValueError("The model did not run in TFLite Micro with a 256 MB arena.")
            high *= 2
        low = 0
        while high - low > step:
            lines = _run_child(["arena", path, low, high, step], timeout)
            pending = None
            for line in lines:
                word, _, value = line.partition(" ")
                if word == "try":
                    pending = int(value)
                elif word == "ok":
                    high, pending = int(value), None
                elif word == "fail":
                    low, pending = int(value), None
                elif word == "done":
                    return int(value)
            if pending is None:
                raise RuntimeError("The arena search stopped without a result:\n"
                                   + "\n".join(lines[-5:]))
            low = pending  # the interpreter crashed on this size: too small
    return high


def report(tflite_bytes, arena=True, arena_limit=None):
    """Flash, arena, MACs and ops of a ``.tflite`` model, measured, not estimated.

    Args:
        tflite_bytes: the ``.tflite`` model.
        arena: measure the smallest arena (a few seconds of bisection in TFLite Micro).
        arena_limit: bytes; raise :class:`ArenaError` if the arena needed is larger.

    Returns:
        dict with ``flash_bytes`` (the whole flatbuffer), ``device_model_bytes`` (the
        flatbuffer as the firmware embeds it, :func:`strip_for_device`), ``weight_bytes``,
        ``arena_bytes``,
        ``arena_note``, ``macs``, ``ops`` (per op, in order) and ``op_counts``.

    Example:
        >>> r = report(open("model.tflite", "rb").read())
        >>> r["flash_bytes"], r["arena_bytes"], r["macs"]
    """
    from tinymoe.export.convert import strip_for_device

    ops = op_table(tflite_bytes)
    result = {
        "flash_bytes": len(tflite_bytes),
        "device_model_bytes": len(strip_for_device(tflite_bytes)[0]),
        "weight_bytes": weight_bytes(tflite_bytes),
        "macs": int(sum(row["macs"] for row in ops)),
        "op_counts": dict(sorted(collections.Counter(row["op"] for row in ops).items())),
        "ops": ops,
    }
    if arena or arena_limit:
        result["arena_bytes"] = smallest_arena(tflite_bytes)
        result["arena_note"] = ARENA_NOTE
        if arena_limit and result["arena_bytes"] > int(arena_limit):
            raise ArenaError(f"The model needs a tensor arena of {result['arena_bytes']:,} bytes, "
                             f"more than the limit of {int(arena_limit):,} bytes.")
    return result


def format_report(result, clock_mhz=216.0):
    """A short text summary of :func:`report`, then the MACs of each op type (and, measured
    on a Cortex-M build, the instructions of each op type).

    Args:
        result: :func:`report`'s dict, with ``"device"`` when measured on a firmware build.
        clock_mhz: the clock at which instructions are also shown as milliseconds, at one
            instruction per cycle.

    Example:
        >>> print(format_report(report(tflite_bytes)))
    """
    lines = [f"flash (model bytes): {result['flash_bytes']:,}",
             f"  of which constant data: {result['weight_bytes']:,}",
             f"  as the firmware embeds it (stripped): {result['device_model_bytes']:,}"]
    if "arena_bytes" in result:
        lines.append(f"tensor arena (smallest that runs): {result['arena_bytes']:,}")
        lines.append(f"  {result['arena_note']}")
    device = result.get("device")
    if device:
        lines.append(f"{device['target']} build of TFLite Micro: arena_used_bytes() "
                     f"{device['arena_bytes']:,}")
        if device["flash_bytes"] is not None:
            lines.append(f"  flash of the firmware image (.text + .rodata + .data): "
                         f"{device['flash_bytes']:,} = model {device['model_bytes']:,} + "
                         f"TFLite Micro and app {device['code_bytes']:,}")
    by_op = (device or {}).get("instructions_by_op") or {}
    if device and device.get("instructions") is not None:

        total = device["instructions"]
        lines.append(f"  instructions per inference: {total:,} (counted under QEMU; "
                     f"{milliseconds_at(total, clock_mhz):,.1f} ms at {clock_mhz:g} MHz if "
                     f"one instruction took one cycle: QEMU models no cycles, caches or "
                     f"flash wait states)")
    lines.append(f"MACs per inference: {result['macs']:,}")
    lines.append(f"ops ({len(result['ops'])}):")
    macs = collections.Counter()
    for row in result["ops"]:
        macs[row["op"]] += row["macs"]
    width = max(len(name) for name in result["op_counts"])
    total = sum(op["instructions"] for op in by_op.values()) or 1
    for name, count in result["op_counts"].items():
        line = f"  {name:<{width}}  x{count:<4d} {macs[name]:>14,} MACs"
        if name in by_op:
            spent = by_op[name]["instructions"]
            line += f" {spent:>14,} instructions ({100 * spent / total:4.1f}%)"
        lines.append(line)
    return "\n".join(lines)


def milliseconds_at(instructions, clock_mhz):
    """Milliseconds ``instructions`` take at ``clock_mhz``, at one instruction per cycle.

    A lower bound for a real part: QEMU counts instructions, not cycles (a Cortex-M7
    issues up to two instructions per cycle, but flash wait states and cache misses cost
    cycles that QEMU does not model).

    Example:
        >>> milliseconds_at(216_000_000, 216)
        1000.0
    """
    return float(instructions) / (float(clock_mhz) * 1e3)
