"""Where a post-training int8 model departs from its float model, tensor by tensor. Run by
hand; writes JSON and a Markdown table.

The float and int8 ``.tflite`` models of one Keras model are run on the same validation
images in LiteRT's reference kernels (those TFLite Micro's are ported from) with every
tensor kept. For each op output, in execution order: the accumulated error of the int8
tensor against the float one, relative to the float tensor's spread (RMS error / standard
deviation); the ops where it jumps above the error of their inputs are where the int8 model
loses. Each BATCH_MATMUL is also
checked alone (its int8 output against a float product of its own int8 inputs).

    python benchmarks/int8_error_propagation.py --model RUNS/seed0/dense_050/best.keras \\
        --size 96 --out benchmarks/results/int8_error_propagation_dense050_96px

With --qat-epochs N the model is also trained N epochs quantisation-aware (simulating every
int8 tensor, tinymoe.layers.int8) and the same comparison is made between the QAT model's
float form (strip_quantization) and its int8 model: before (post-training) and after, per
op and per layer of the model (the error at the layer's last op).
"""

import argparse
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.backend import keras, tf
from tinymoe.data import load_dataset
from tinymoe.export import to_tflite
from tinymoe.pipeline import load_model
from tinymoe.train import TrainConfig, fit


def float_tflite(model, size):
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def tensors(tflite_bytes, image):
    """One run: ({name: float value}, [(op, output, inputs)], {BATCH_MATMUL output: its
    largest error in output steps against the float product of its own int8 inputs})."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=tflite_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                              experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    scale, zero = details["quantization"]
    x = image[None].astype(np.float32)
    if details["dtype"] == np.int8:
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_tensor(details["index"], x)
    interpreter.invoke()
    by_index = {t["index"]: t for t in interpreter.get_tensor_details()}

    def value(index):
        v = interpreter.get_tensor(index)
        if v.dtype == np.int8:
            scale, zero = by_index[index]["quantization"]
            v = (v.astype(np.float32) - zero) * scale
        return v

    def name(index):
        return by_index[index]["name"].split(";")[0]

    values, ops, matmul = {}, [], {}
    for op in interpreter._get_ops_details():
        inputs, output = [i for i in op["inputs"] if i >= 0], op["outputs"][0]
        values[name(output)] = value(output)
        ops.append((op["op_name"], name(output), [name(i) for i in inputs]))
        if op["op_name"] == "BATCH_MATMUL" and by_index[output]["dtype"] == np.int8:
            product = np.matmul(value(inputs[0]), value(inputs[1]))
            raw = interpreter.get_tensor(output)
            inside = (raw > -128) & (raw < 127)  # saturated values are a range question
            error = np.abs(value(output) - product)[inside]
            matmul[name(output)] = float(error.max() / by_index[output]["quantization"][0])
            matmul[name(output) + " (saturated share)"] = float(1 - inside.mean())
    return values, ops, matmul


def op_errors(model, data, args, int8=None):
    """Per-op rows (op, tensor, relative_error, jump) of ``model``'s int8 form against its
    float form on ``args.images`` val images, and the BATCH_MATMUL step errors."""
    int8 = int8 or to_tflite(model, data.split("train")[0][:args.calibration], verify=False)
    real = float_tflite(model, args.size)
    sums, matmul = {}, {}
    for image in data.split("val")[0][:args.images]:
        reference, _, _ = tensors(real, image)
        quantised, ops, errors = tensors(int8, image)
        for name, error in errors.items():
            matmul[name] = max(matmul.get(name, 0.0), error)
        for op, name, _ in ops:
            if (name in reference and reference[name].dtype == np.float32
                    and reference[name].shape == quantised[name].shape):
                error = quantised[name] - reference[name]
                total = sums.setdefault(name, [op, 0.0, 0.0])
                total[1] += float(np.mean(error ** 2))
                total[2] += float(np.var(reference[name]))
    relative = {name: (e / max(v, 1e-20)) ** 0.5 for name, (_, e, v) in sums.items()}
    rows = []
    for op, name, inputs in ops:  # the jump: what this op adds to the worst of its inputs
        if name in relative:
            before = max([relative[i] for i in inputs if i in relative], default=0.0)
            rows.append({"op": op, "tensor": name, "relative_error": relative[name],
                         "jump": relative[name] - before})
    return rows, matmul


def layer_errors(model, rows):
    """{top-level layer: the relative error at its last op} (layers that own ops)."""
    found = {}
    for layer in model.layers:
        mine = [r for r in rows if f"/{layer.name}/" in r["tensor"]]
        if mine:
            found[layer.name] = mine[-1]["relative_error"]
    return found


def qat_model(model, data, args):
    """``model`` after ``args.qat_epochs`` of QAT simulating every int8 tensor: (its float
    form, its int8 model)."""
    from tinymoe.augment import AugmentConfig, make_dataset
    from tinymoe.optimize import quantize_aware, strip_quantization

    x_train, y_train = data.split("train")
    keras.utils.set_random_seed(args.seed)
    qat = quantize_aware(model)
    train = make_dataset(x_train, y_train, data.num_classes, 32, training=True,
                         augment=AugmentConfig(crop=True, flip=True))
    fit(qat, train, None, TrainConfig(epochs=args.qat_epochs, batch_size=32,
                                      learning_rate=args.learning_rate, warmup_epochs=0),
        verbose=2)
    return strip_quantization(qat), to_tflite(qat, x_train[:args.calibration], verify=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--calibration", type=int, default=100, help="training images")
    parser.add_argument("--images", type=int, default=8, help="validation images compared")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--qat-epochs", type=int, default=0,
                        help="also compare after this many epochs of QAT")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="of the QAT")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and augmentation of QAT")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    model = load_model(args.model)
    data = load_dataset(args.data, args.size)
    results = {"ptq": op_errors(model, data, args)}
    if args.qat_epochs:
        float_model, int8 = qat_model(model, data, args)
        results["qat"] = op_errors(float_model, data, args, int8)
    meta = run_meta(start, model=args.model, size=args.size, images=args.images,
                    qat_epochs=args.qat_epochs)
    layers = {method: layer_errors(model, rows) for method, (rows, _) in results.items()}
    lines = ["# Where int8 departs from float, tensor by tensor", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}", "",
             f"Relative error = RMS(int8 - float) / std(float) of each op output over "
             f"{args.images} val images (LiteRT reference kernels); ptq: the model and its "
             "post-training int8 model" + (f"; qat: after {args.qat_epochs} epochs of QAT "
                                           "simulating every int8 tensor, its float form "
                                           "and its int8 model" if args.qat_epochs else "")
             + ".", "", "Per layer (the error at its last op):", "",
             "| layer | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for name in layers["ptq"]:
        lines.append(f"| {name} | " + " | ".join(f"{layers[m].get(name, float('nan')):.3f}"
                                                 for m in layers) + " |")
    for method, (rows, steps) in results.items():
        jumps = sorted(rows, key=lambda r: -r["jump"])[:args.top]
        lines += ["", f"{method}: final output {rows[-1]['relative_error']:.3f}; the largest "
                  "jumps:", "", "| op | output tensor | relative error | jump over its worst "
                  "input |", "|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['tensor']} | {r['relative_error']:.3f} | "
                  f"{r['jump']:+.3f} |" for r in jumps]
        if steps:
            worst = max(v for k, v in steps.items() if "saturated" not in k)
            saturated = max(v for k, v in steps.items() if "saturated" in k)
            lines += ["", "BATCH_MATMUL alone (its int8 output against the float product of "
                      f"its own int8 inputs): largest error {worst:.2f} quantisation steps of "
                      f"the output where it is not saturated; saturated share at most "
                      f"{saturated:.2%}."]
    payload = {"meta": meta, "layers": layers,
               **{f"{m}_rows": rows for m, (rows, _) in results.items()},
               "batch_matmul_max_error": results["ptq"][1]}
    write_results(args.out, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
