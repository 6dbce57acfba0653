"""Parameters and multiply-accumulates (MACs) of a model, counted from its own graph."""

import numpy as np

from tinymoe.backend import tf

_MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")


def count_macs(model):
    """MACs of one inference (batch 1), counted from the ops of the traced model.

    Convolutions, depthwise convolutions and matrix products are counted from their static
    shapes in the inference graph; element-wise ops, norms and softmax are not (the usual
    convention). A mixture of experts computed by masking counts every expert, as it runs.

    Example:
        >>> count_macs(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        12
    """
    shape = [1] + [int(d) for d in model.input_shape[1:]]
    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return sum(_op_macs(op) for op in graph.get_operations())


def _op_macs(op):
    if op.type == "Conv2D":
        kernel = op.inputs[1].shape.as_list()  # [kh, kw, cin, cout]
        return int(np.prod(op.outputs[0].shape.as_list()) * kernel[0] * kernel[1] * kernel[2])
    if op.type == "DepthwiseConv2dNative":
        kernel = op.inputs[1].shape.as_list()  # [kh, kw, cin, multiplier]
        return int(np.prod(op.outputs[0].shape.as_list()) * kernel[0] * kernel[1])
    if op.type in _MATMUL_OPS:
        left = op.inputs[0].shape.as_list()
        transposed = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
        inner = left[-2] if transposed else left[-1]
        return int(np.prod(op.outputs[0].shape.as_list()) * inner)
    return 0


def profile(model):
    """Size and compute of a Keras model.

    Returns:
        dict with ``params`` (all weights), ``trainable_params`` and ``macs`` (one inference
        at batch 1, see :func:`count_macs`).

    Example:
        >>> profile(create_model("mobilevit_v2_050"))["params"]
        1370000  # about
    """
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return {"params": int(model.count_params()), "trainable_params": trainable,
            "macs": count_macs(model)}
