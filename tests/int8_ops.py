"""Op-by-op comparison of TFLite Micro with LiteRT's reference kernels on one int8 model.

An end-to-end comparison of the two runtimes cannot bound their difference by a figure that
follows from the kernels: one op that rounds differently by 1 LSB hands both runtimes
different inputs for every later op, and a later CONV_2D, RSQRT or MUL can grow that 1 LSB
by its gain, which depends on the trained weights and the calibrated scales. So the
comparison here is per op: every op of the graph is cut loose into its own little graph
(its non-constant inputs become graph inputs), and both runtimes run each op on the same
int8 inputs, those TFLM itself computed for that op in the whole model. Where the two
kernels are the same integer algorithm the outputs must be equal; where they round
differently the difference is what that rounding allows, whatever the weights.
"""

import copy

import numpy as np

# How many LSB TFLM and LiteRT's reference kernels may put between their int8 outputs for
# one op on the same int8 inputs. An op that only moves, compares or picks int8 values
# (RESHAPE, GATHER, CONCATENATION of equal scales, ARG_MAX, ...) is exact: 0. An op that
# computes a real value and rounds it to int8 once (a requantisation) is 1: each runtime
# lands within 0.5 LSB of the real value, plus a fixed-point error far below 0.5 LSB, so
# the two integers are less than 2 apart: at most 1. Where the two kernels are the same
# integer arithmetic they agree bit for bit; running every op of the exported models cut
# loose on random int8 inputs in both runtimes found three that are not:
# - FULLY_CONNECTED (per-channel): TFLM rounds the accumulator twice (gemmlowp's
#   SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT: within 0.5 + 0.5 * 2**-shift
#   of the real value), LiteRT once (round(acc * M) exactly): 1 LSB apart on ~20% of outputs.
# - MUL: TFLM derives the multiplier s1 * s2 / s_out in double, LiteRT in float32; they are
#   ~1e-7 apart, so a product that close to a rounding boundary rounds the other way.
# - LOGISTIC: a value within ~1e-6 of a half-way point (sigmoid is computed in fixed point
#   in TFLM) can round down in one runtime and up in the other.
ROUNDING_LSB = dict.fromkeys(
    ["ADD", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "LOGISTIC",
     "MEAN", "MUL", "RELU", "RSQRT", "SOFTMAX", "SUB"], 1)


def _flatbuffer_model(tflite_bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))


def _to_bytes(model):
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_name(model, op):
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code = model.operatorCodes[op.opcodeIndex]
    return names[max(code.builtinCode, code.deprecatedBuiltinCode)]


def isolated_ops(model):
    """Cuts every op loose: each reads its non-constant inputs from graph inputs.

    Args:
        model: the flatbuffer object model (``flatbuffer_utils``); changed in place.

    Returns:
        (model bytes, op names, ``stands_for``: per graph input the original tensor it
        stands for, ``outputs``: per op its output tensor indices, which are the graph
        outputs in that order).
    """
    graph = model.subgraphs[0]
    names, stands_for, outputs = [], [], []
    new_inputs = []
    for op in graph.operators:
        names.append(_op_name(model, op))
        inputs = [int(t) for t in op.inputs]
        for slot, tensor in enumerate(inputs):
            if tensor < 0 or model.buffers[graph.tensors[tensor].buffer].data is not None:
                continue  # optional input, or a constant (weights, bias, shape)
            copy_of = copy.deepcopy(graph.tensors[tensor])
            copy_of.name = copy_of.name + f"/isolated_{len(new_inputs)}".encode()
            copy_of.buffer = len(model.buffers)
            model.buffers.append(copy.deepcopy(model.buffers[0]))  # an empty buffer
            graph.tensors.append(copy_of)
            inputs[slot] = len(graph.tensors) - 1
            new_inputs.append(len(graph.tensors) - 1)
            stands_for.append(tensor)
        op.inputs = np.array(inputs, dtype=np.int32)
        outputs.append([int(t) for t in op.outputs])
    graph.inputs = np.array(new_inputs, dtype=np.int32)
    graph.outputs = np.array([t for ts in outputs for t in ts], dtype=np.int32)
    return _to_bytes(model), names, stands_for, outputs


def compare_ops(tflite_bytes, images):
    """Runs every op of an int8 model alone in TFLM and in LiteRT's reference kernels.

    Each op gets, in both runtimes, the inputs TFLM computed for it when running the whole
    model on the image.

    Args:
        tflite_bytes: a full-int8 model with one input.
        images: int8 inputs ``[B, ...]`` (already quantised).

    Returns:
        list with one dict per op in execution order: ``op`` (name), ``lsb`` (the largest
        |TFLM - LiteRT| over the op's outputs and the images), ``replayed`` (True when the
        cut-loose op in TFLM gave what TFLM computed in the whole model, on every image).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro.python.tflite_micro import runtime

    model = _flatbuffer_model(tflite_bytes)
    graph = model.subgraphs[0]
    produced = sorted({int(t) for op in graph.operators for t in op.outputs}
                      | {int(t) for t in graph.inputs})
    whole_model = runtime.Interpreter.from_bytes(
        bytes(tflite_bytes), arena_size=64 * 2**20,
        intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    isolated, names, stands_for, outputs = isolated_ops(model)
    micro = runtime.Interpreter.from_bytes(isolated, arena_size=64 * 2**20)
    lite = Interpreter(model_content=isolated,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    lite.allocate_tensors()
    lite_inputs = [d["index"] for d in lite.get_input_details()]
    lite_outputs = [d["index"] for d in lite.get_output_details()]
    rows = [{"op": name, "lsb": 0, "replayed": True} for name in names]
    for image in images:
        whole_model.set_input(image[None], 0)
        whole_model.invoke()
        whole = {}
        for tensor in produced:
            found = whole_model.GetTensor(tensor, 0)  # {"dtype", "shape", "tensor_data"}
            whole[tensor] = np.asarray(found["tensor_data"], found["dtype"]).reshape(
                found["shape"])
        for position, tensor in enumerate(stands_for):
            micro.set_input(whole[tensor], position)
            lite.set_tensor(lite_inputs[position], whole[tensor])
        micro.invoke()
        lite.invoke()
        position = 0
        for row, tensors in zip(rows, outputs):
            for tensor in tensors:
                a = np.array(micro.get_output(position))
                b = lite.get_tensor(lite_outputs[position])
                assert a.shape == b.shape == whole[tensor].shape, (row["op"], a.shape, b.shape)
                row["lsb"] = max(row["lsb"], int(np.abs(a.astype(np.int64) - b).max(initial=0)))
                row["replayed"] &= bool(np.array_equal(a, whole[tensor]))
                position += 1
    return rows


def assert_ops_agree(tflite_bytes, images):
    """Asserts that TFLM runs every op of the model as LiteRT's reference kernels do.

    Every op is compared (the list of compared ops is the model's), on the inputs TFLM gave
    it in the whole model (the cut-loose op in TFLM reproduces its whole-model output), and
    the two runtimes' outputs are equal, or at most :data:`ROUNDING_LSB` apart for the ops
    that requantise.

    Returns:
        the rows of :func:`compare_ops`.
    """
    from tinymoe.export import op_names

    rows = compare_ops(tflite_bytes, images)
    assert [row["op"] for row in rows] == op_names(tflite_bytes)
    assert all(row["replayed"] for row in rows), [r["op"] for r in rows if not r["replayed"]]
    too_far = [(i, row["op"], row["lsb"]) for i, row in enumerate(rows)
               if row["lsb"] > ROUNDING_LSB.get(row["op"], 0)]
    assert not too_far, f"(op index, op, LSB apart) beyond ROUNDING_LSB: {too_far}"
    return rows
