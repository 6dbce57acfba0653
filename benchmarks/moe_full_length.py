"""Do the experts earn their flash at full length? The dense MCU model, its per-image MoEs and
its flash-equal dense control, each pretrained on Tiny ImageNet-200 for the same full schedule
(``pretrain.py``, one run per model and seed), measured side by side.

For each finished pretraining run: its best Tiny ImageNet val top-1 (float, as pretrain.py
logged it) and, converted to int8 (post-training; the MoE in its deployed per-image form, one
expert's MACs), its int8 val top-1 in TFLite Micro on ``--images`` val images, and at
128x128 with 100 classes (the deployment shape) its Cortex-M7 CMSIS-NN instructions, arena
and whole image (the firmware app under QEMU). The MoEs are diagnosed by
``moe_routing_int8.py`` (experts' cosine, mean-expert replacement with McNemar, router load).

    for model in mobilevit_v2_mcu mobilevit_v2_mcu_moe4_image mobilevit_v2_mcu_ffn4x; do
      python benchmarks/pretrain.py --data /work/data/tiny-imagenet-200 --model $model \
          --epochs 30 --seed 0 --out /work/runs/moe40/seed0 \
          --results benchmarks/results/moe_full_length/pretrain_${model}_seed0
    done
    python benchmarks/moe_full_length.py --tinyimagenet /work/data/tiny-imagenet-200 \
        --runs /work/runs/moe40/seed0/mobilevit_v2_mcu ... --out benchmarks/results/moe_full_length
"""

import argparse
import json
import os
import time

import numpy as np
from harness import load_data, publish

from tinymoe.evaluation import evaluate_tflite
from tinymoe.export import to_tflite
from tinymoe.models import create_model, has_experts, settle_batch_norms, with_dispatch
from tinymoe.pipeline import load_model


def device_row(model_name):
    """Cortex-M7 instructions, arena and image of ``model_name`` at 128x128, 100 classes."""
    from tinymoe.export.firmware_app import measure_on_device

    images = np.random.default_rng(0).uniform(0, 255, (16, 128, 128, 3)).astype(np.float32)
    model = settle_batch_norms(create_model(model_name, num_classes=100,
                                            input_shape=(128, 128, 3)), images)
    if has_experts(model):
        model = with_dispatch(model, "sparse")  # per image: the chosen expert's weights only
    measured = measure_on_device(to_tflite(model, images), "cortex-m7")
    return {"instructions": measured["instructions"], "arena_bytes": measured["arena_bytes"],
            "image_bytes": measured["flash_bytes"]}


def measure(run_dir, data, images):
    with open(os.path.join(run_dir, "summary.json")) as handle:
        summary = json.load(handle)
    best = load_model(os.path.join(run_dir, "best.keras"))
    x_train, _ = data.split("train")
    x_val, y_val = data.split("val")
    pick = np.sort(np.random.default_rng(0).permutation(len(x_val))[:images])
    deployed = with_dispatch(best, "sparse") if has_experts(best) else best
    tflite_bytes = to_tflite(deployed, x_train[:200].astype(np.float32))
    return {"model": summary["model"], "seed": summary["seed"],
            "epochs": summary["epochs"], "params": summary["params"],
            "best_epoch": summary["best_epoch"], "tinyimagenet_val_top1": summary["val_top1"],
            "tinyimagenet_val_int8_top1": evaluate_tflite(tflite_bytes, x_val[pick],
                                                          y_val[pick]),
            "int8_images": int(len(pick)), "pretrain_wall_s": summary["wall_s"],
            "pretrain_command": summary["command"], **device_row(summary["model"])}


def markdown(rows, meta):
    lines = ["# Experts at full length on Tiny ImageNet-200 (64x64)", "",
             *(f"Command: `{run['command']}` ({run['wall_s']} s)  " for run in meta["runs"]),
             f"Machine: {meta['machine']}  ", "",
             "Each model pretrained from scratch for the same schedule (`pretrain.py`, its "
             "command and wall time below); val top-1 of the best epoch (float) and of its "
             "post-training int8 model in TFLite Micro; instructions, arena and image of the "
             "Cortex-M7 CMSIS-NN firmware at 128x128, 100 classes (the MoE deployed per image: "
             "one expert's MACs).", "",
             "| model | seed | epochs | params | val top-1 | val int8 | instructions | "
             "arena | image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["seed"])):
        lines.append(f"| {r['model']} | {r['seed']} | {r['epochs']} | {r['params']:,} | "
                     f"{r['tinyimagenet_val_top1']:.4f} | {r['tinyimagenet_val_int8_top1']:.4f} "
                     f"| {r['instructions'] / 1e6:.1f} M | {r['arena_bytes']:,} | "
                     f"{r['image_bytes']:,} |")
    lines += ["", "Pretraining runs:", ""] + [
        f"- {r['model']} seed {r['seed']}: `{r['pretrain_command']}` ({r['pretrain_wall_s']} s)"
        for r in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tinyimagenet", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="pretrain.py run folders")
    parser.add_argument("--images", type=int, default=2000, help="val images scored in int8")
    parser.add_argument("--out", default="benchmarks/results/moe_full_length")
    args = parser.parse_args()
    start = time.time()
    data = load_data(args, 64)
    rows = [measure(run, data, args.images) for run in args.runs]
    publish(args.out, rows, start, markdown, ("model", "seed"))


if __name__ == "__main__":
    main()
