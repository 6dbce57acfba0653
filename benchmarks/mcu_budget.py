"""What the models cost on a microcontroller, and what int8 costs in accuracy. Run by hand;
writes JSON and a Markdown table.

Part "models": every registered model at 96x96 and 128x128 (100 classes), converted to full
int8 and measured in the TFLite Micro interpreter: flash (the .tflite bytes), the smallest
tensor arena that runs (bisection; the host's 64-bit interpreter, an upper bound for a
32-bit MCU), MACs. MoE models are measured with masked dispatch (every expert runs) and
again with sparse dispatch (fixed capacity, factor 1.25). With --target cortex-m3, each
model is also built into the firmware app for Cortex-M3 and run under QEMU (mps2-an385) on
two images: arena_used_bytes() there (the number that counts on an MCU), the image's flash
(.text + .rodata + .data: model array + TFLite Micro + app), and whether its int8 output
equals the Python interpreter's byte for byte. Budget: model file <= 900 KB (900,000
bytes), arena <= 300 KB (300,000 bytes) on the Cortex-M build.

Part "accuracy": trained dense-0.5 and MoE-0.5 models on cub100 (e.g. from
benchmarks/cub100_accuracy.py): float top-1, post-training int8 top-1 and QAT int8 top-1,
all on the test split, int8 run in TFLite Micro. Nothing is chosen on the test split.

Examples:
    python benchmarks/mcu_budget.py --part models --out benchmarks/results/mcu_budget_models
    python benchmarks/mcu_budget.py --part models --sizes 128 --target cortex-m3 \
        --models mobilevit_v2_050 mobilevit_v2_moe_050 \
        --out benchmarks/results/mcu_budget_models_cortex_m3
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
from tinymoe.export import report, tflm_invoke, to_tflite
from tinymoe.export.firmware_app import run_firmware
from tinymoe.models import create_model, list_models, with_dispatch
from tinymoe.pipeline import evaluate, evaluate_tflite, load_model, optimize_run

FLASH_TARGET, ARENA_TARGET = 900_000, 300_000


def device_columns(tflite_bytes, images, python_arena, target):
    """The firmware app for ``target`` on two images: arena, flash, bytes equal to Python."""
    start = time.time()
    run = run_firmware(tflite_bytes, images, target=target, arena_bytes=python_arena)
    python = tflm_invoke(tflite_bytes, images, dequantize_output=False)
    return {"device_arena_bytes": run.arena_used_bytes, "device_flash_bytes": run.flash_bytes,
            "device_code_bytes": run.flash_bytes - run.model_array_bytes,
            "device_bytes_equal_python": bool(np.array_equal(run.outputs, python)),
            "device_images": len(images), "device_seconds": round(time.time() - start, 1)}


def models_part(sizes, num_classes, names=None, target=None):
    rows = []
    rng = np.random.default_rng(0)
    names = names or list_models()
    for size in sizes:
        images = np.round(rng.uniform(0, 255, (16, size, size, 3))).astype(np.float32)
        variants = [(name, None) for name in names]
        variants += [(name, "sparse") for name in names if "moe" in name]
        for name, dispatch in variants:
            model = create_model(name, num_classes=num_classes, input_shape=(size, size, 3))
            if dispatch:
                model = with_dispatch(model, dispatch)
            tflite_bytes = to_tflite(model, images)
            measured = report(tflite_bytes)
            label = f"{name} ({dispatch} dispatch)" if dispatch else name
            rows.append({"model": label, "size": size, "params": int(model.count_params()),
                         "macs": measured["macs"], "flash_bytes": measured["flash_bytes"],
                         "weight_bytes": measured["weight_bytes"],
                         "arena_bytes": measured["arena_bytes"],
                         "fits_flash": measured["flash_bytes"] <= FLASH_TARGET,
                         "fits_arena": measured["arena_bytes"] <= ARENA_TARGET})
            if target:
                rows[-1].update(device_columns(tflite_bytes, images[:2],
                                               measured["arena_bytes"], target))
                rows[-1]["fits_arena"] = rows[-1]["device_arena_bytes"] <= ARENA_TARGET
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
    if part == "models" and meta.get("target"):
        lines += [f"Budget: model file <= {FLASH_TARGET:,} bytes, arena <= {ARENA_TARGET:,} "
                  f"bytes on the {meta['target']} build. Python arena: the TFLite Micro Python "
                  f"interpreter (64-bit host); {meta['target']} arena: arena_used_bytes() of the "
                  "firmware app (firmware_export/) built against TFLM's C++ sources and run "
                  "under QEMU (mps2-an385, TFLM reference kernels); flash: the app image's "
                  ".text + .rodata + .data. Untrained weights, 100 classes; two images each.",
                  "", "| model | input | params | MACs | model file bytes | Python arena | "
                  f"{meta['target']} arena | {meta['target']} flash (of which TFLM + app) | "
                  "int8 output equal to Python | fits budget |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            fits = r["fits_flash"] and r["fits_arena"]
            lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['params']:,} | "
                         f"{r['macs']:,} | {r['flash_bytes']:,} | {r['arena_bytes']:,} | "
                         f"{r['device_arena_bytes']:,} | {r['device_flash_bytes']:,} "
                         f"({r['device_code_bytes']:,}) | "
                         f"{'yes' if r['device_bytes_equal_python'] else 'NO'} | "
                         f"{'yes' if fits else 'no'} |")
    elif part == "models":
        lines += [f"Budget: flash <= {FLASH_TARGET:,} bytes, arena <= {ARENA_TARGET:,} bytes. "
                  "Arena measured by the TFLite Micro Python interpreter (64-bit host): an "
                  "upper bound for a 32-bit MCU.", "",
                  "| model | input | params | MACs | flash bytes | arena bytes | "
                  "fits flash | fits arena |", "|---|---|---|---|---|---|---|---|"]
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
    parser.add_argument("--models", nargs="+", help="models part: these registered models only")
    parser.add_argument("--target", choices=("cortex-m3", "host"),
                        help="models part: also run each model in the firmware app built for "
                             "this target")
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=96, help="accuracy part: input size")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=FILE.keras")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    start = time.time()
    if args.part == "models":
        rows = models_part(args.sizes, args.num_classes, args.models, args.target)
    else:
        models = [tuple(item.split("=", 1)) for item in args.model]
        rows = accuracy_part(models, args.data, args.size, args.qat_epochs, args.out)
    meta = run_meta(start, size=args.size, qat_epochs=args.qat_epochs, target=args.target)
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(args.part, rows, meta))


if __name__ == "__main__":
    main()
