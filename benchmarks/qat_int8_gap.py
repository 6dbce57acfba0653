"""How far int8 in TFLite Micro falls below the float model whose weights it holds: after
post-training quantisation, after tinymoe's earlier QAT (kernels and layer outputs only) and
after QAT that simulates every int8 tensor (tinymoe.layers.int8). Run by hand; writes JSON
(one row per model, split and method, with ``float_top1`` and ``int8_top1``) and a Markdown
table.

For each method the float model is the one converted: the trained model for post-training
quantisation, the QAT model without its activation quantisation (strip_quantization) after
QAT. MoE models are converted with masked dispatch (every expert on every patch, exact), so
that the gap is quantisation alone, not sparse dispatch's dropped patches.

    python benchmarks/qat_int8_gap.py --size 128 --qat-epochs 2 \\
        --model mcu_flagship=RUNS/mcu_moe_cluster/best.keras \\
        --out benchmarks/results/qat_int8_gap_128px
"""

import argparse
import os
import time

from common import run_meta, write_results

from tinymoe.augment import AugmentConfig, make_dataset
from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.export import to_tflite
from tinymoe.optimize import quantize_aware, strip_quantization
from tinymoe.pipeline import evaluate, evaluate_tflite, load_model
from tinymoe.train import TrainConfig, fit

METHODS = ("ptq", "qat_kernels", "qat_int8")


def gap_rows(name, path, data, args):
    """Rows for one model: each method, val and test."""
    x_train, y_train = data.split("train")
    calibration = x_train[:args.calibration]
    splits = {split: data.split(split) for split in ("val", "test")}
    rows = []
    for method in args.methods:
        start = time.time()
        keras.utils.set_random_seed(args.seed)  # the same shuffle and augmentation per method
        model = load_model(path)
        if method == "ptq":
            converted, tflite_bytes = model, to_tflite(model, calibration)
        else:
            qat = quantize_aware(model, simulate_int8=method == "qat_int8")
            train = make_dataset(x_train, y_train, data.num_classes, args.batch_size,
                                 training=True, augment=AugmentConfig(crop=True, flip=True))
            fit(qat, train, None, TrainConfig(epochs=args.qat_epochs,
                                              batch_size=args.batch_size,
                                              learning_rate=args.learning_rate,
                                              warmup_epochs=0), verbose=2)
            converted, tflite_bytes = strip_quantization(qat), to_tflite(qat, calibration)
        for split, (x, y) in splits.items():
            rows.append({"model": name, "split": split, "method": method,
                         "float_top1": evaluate(converted, x, y, data.num_classes),
                         "int8_top1": evaluate_tflite(tflite_bytes, x, y)})
            rows[-1]["gap"] = rows[-1]["int8_top1"] - rows[-1]["float_top1"]
            rows[-1]["wall_s"] = round(time.time() - start, 1)
            print(rows[-1], flush=True)
    return rows


def markdown(rows, meta):
    lines = [f"# int8 against float, {meta['size']}x{meta['size']}", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s; QAT {meta['qat_epochs']} epochs at learning rate "
             f"{meta['learning_rate']}; {meta['calibration']} calibration images", "",
             "float: the model converted (after QAT: without activation quantisation); int8: "
             "TFLite Micro. ptq: post-training; qat_kernels: QAT of kernels and layer outputs "
             "only; qat_int8: QAT simulating every int8 tensor.", "",
             "| model | method | val float | val int8 | val gap | test float | test int8 | "
             "test gap |", "|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model):
            cells = []
            for split in ("val", "test"):
                row = next(r for r in rows if (r["model"], r["method"], r["split"]) ==
                           (model, method, split))
                cells += [f"{row['float_top1']:.3f}", f"{row['int8_top1']:.3f}",
                          f"{100 * row['gap']:+.1f}"]
            lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=200, help="training images")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and augmentation of QAT")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    models = [spec.split("=", 1) for spec in args.model]
    for name, path in models:
        if not os.path.exists(path):
            parser.error(f"--model {name}: no file {path}")
    start = time.time()
    data = load_dataset(args.data, args.size)
    rows = []
    for name, path in models:
        rows.extend(gap_rows(name, path, data, args))
        meta = run_meta(start, size=args.size, qat_epochs=args.qat_epochs,
                        learning_rate=args.learning_rate, calibration=args.calibration)
        write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
