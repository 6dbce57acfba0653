"""What the models cost on a microcontroller, and what int8 costs in accuracy. Run by hand;
writes JSON and a Markdown table.

Part "models": every registered model at 96x96 and 128x128 (100 classes), converted to full
int8 and measured in the TFLite Micro interpreter: flash (the .tflite bytes), the smallest
tensor arena that runs (bisection; the host's 64-bit interpreter, an upper bound for a
32-bit MCU), MACs. MoE models are measured with masked dispatch (every expert runs) and
again with sparse dispatch (fixed capacity, factor 1.25). Targets: flash <= 1 MB (1,048,576 bytes), arena <= 320 KB (327,680 bytes).

Part "accuracy": trained dense-0.5 and MoE-0.5 models on cub100 (e.g. from
benchmarks/cub100_accuracy.py): float top-1, post-training int8 top-1 and QAT int8 top-1,
all on the test split, int8 run in TFLite Micro. Nothing is chosen on the test split.

Examples:
    python benchmarks/mcu_budget.py --part models --out benchmarks/results/mcu_budget_models
    python benchmarks/mcu_budget.py --part accuracy --size 96 \\
        --model dense_050=RUNS/seed0/dense_050/best.keras \\
        --model moe_050_cluster=RUNS/seed0/moe_050_cluster/best.keras \\
        --out benchmarks/results/mcu_budget_accuracy_96px
"""

import argparse
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.data import load_dataset
from tinymoe.export import report, to_tflite
from tinymoe.models import create_model, list_models, with_dispatch
from tinymoe.pipeline import evaluate, evaluate_tflite, load_model, optimize_run

FLASH_TARGET, ARENA_TARGET = 1024 * 1024, 320 * 1024


def models_part(sizes, num_classes):
    rows = []
    rng = np.random.default_rng(0)
    for size in sizes:
        images = rng.uniform(0, 255, (16, size, size, 3)).astype(np.float32)
        variants = [(name, None) for name in list_models()]
        variants += [(name, "sparse") for name in list_models() if "moe" in name]
        for name, dispatch in variants:
            model = create_model(name, num_classes=num_classes, input_shape=(size, size, 3))
            if dispatch:
                model = with_dispatch(model, dispatch)
            measured = report(to_tflite(model, images))
            label = f"{name} ({dispatch} dispatch)" if dispatch else name
            rows.append({"model": label, "size": size, "params": int(model.count_params()),
                         "macs": measured["macs"], "flash_bytes": measured["flash_bytes"],
                         "weight_bytes": measured["weight_bytes"],
                         "arena_bytes": measured["arena_bytes"],
                         "fits_flash": measured["flash_bytes"] <= FLASH_TARGET,
                         "fits_arena": measured["arena_bytes"] <= ARENA_TARGET})
            print(rows[-1], flush=True)
    return rows


def accuracy_part(models, data_dir, size, qat_epochs, out):
    data = load_dataset(data_dir, size)
    x_test, y_test = data.split("test")
    rows = []
    for label, path in models:
        model = load_model(path)
        row = {"model": label, "path": path, "float_test_top1": evaluate(
            model, x_test, y_test, data.num_classes)}
        for mode, epochs in (("ptq", 0), ("qat", qat_epochs)):
            start = time.time()
            tflite_bytes, summary = optimize_run(model, data, f"{out}/runs/{label}_{mode}",
                                                 qat_epochs=epochs, verbose=2)
            row[f"{mode}_int8_test_top1"] = evaluate_tflite(tflite_bytes, x_test, y_test)
            row[f"{mode}_seconds"] = round(time.time() - start, 1)
            row.update({key: summary[key] for key in ("flash_bytes", "arena_bytes", "macs")})
        row["qat_epochs"] = qat_epochs
        rows.append(row)
        print(row, flush=True)
    return rows


def markdown(part, rows, meta):
    lines = [f"# MCU budget: {part}", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}  ", f"Wall time: {meta['wall_s']} s", ""]
    if part == "models":
        lines += ["Targets: flash <= 1,048,576 bytes, arena <= 327,680 bytes. Arena measured by "
                  "the TFLite Micro Python interpreter (64-bit host): an upper bound for a "
                  "32-bit MCU.", "",
                  "| model | input | params | MACs | flash bytes | arena bytes | "
                  "fits 1 MB flash | fits 320 KB arena |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['params']:,} | "
                         f"{r['macs']:,} | {r['flash_bytes']:,} | {r['arena_bytes']:,} | "
                         f"{'yes' if r['fits_flash'] else 'no'} | "
                         f"{'yes' if r['fits_arena'] else 'no'} |")
    else:
        lines += [f"Test split of cub100 at {meta['size']}x{meta['size']}; int8 run in TFLite "
                  "Micro. PTQ: post-training quantisation (200 training images calibrate); "
                  f"QAT: {meta['qat_epochs']} epochs of quantisation-aware training at "
                  "learning rate 2e-4, then the same conversion.", "",
                  "| model | float top-1 | PTQ int8 top-1 | QAT int8 top-1 | flash bytes | "
                  "arena bytes | MACs |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['float_test_top1']:.3f} | "
                         f"{r['ptq_int8_test_top1']:.3f} | {r['qat_int8_test_top1']:.3f} | "
                         f"{r['flash_bytes']:,} | {r['arena_bytes']:,} | {r['macs']:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("models", "accuracy"), required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=96, help="accuracy part: input size")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=FILE.keras")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    start = time.time()
    if args.part == "models":
        rows = models_part(args.sizes, args.num_classes)
    else:
        models = [tuple(item.split("=", 1)) for item in args.model]
        rows = accuracy_part(models, args.data, args.size, args.qat_epochs, args.out)
    meta = run_meta(start, size=args.size, qat_epochs=args.qat_epochs)
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(args.part, rows, meta))


if __name__ == "__main__":
    main()
