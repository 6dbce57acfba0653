"""Expert capacity calibrated at export (`--capacity-factor auto`) on a trained MoE model:
the factor chosen per MoE layer, the sparse/masked int8 agreement it gives, each layer's
MACs against one expert over all its patches or tokens, and host TFLite Micro latency.
Run by hand; writes JSON and a Markdown table.

1. Calibration (tinymoe.export.calibrate_capacity): the export's 200 calibration images
   (training split) and the validation split; never the test split.
2. Check in TFLite Micro: the chosen sparse int8 model against the masked int8 model on the
   validation split (top-1 agreement, top-1 accuracy of both).
3. MACs of each MoE layer converted alone at its factor (router and dispatch included),
   against one expert over all its patches or tokens.
4. Host latency in the TFLite Micro interpreter, median of --runs alternating invocations:
   the largest MoE layer alone (sparse at its factor, masked), the whole model (sparse,
   masked) and the dense backbone of the same width.

Example:
    python benchmarks/capacity_calibration.py --model RUNS/moe/best.keras --size 128 \\
        --dense mobilevit_v2_050 --out benchmarks/results/capacity_calibration_128px
"""

import argparse
import time

import numpy as np
from common import run_meta, write_results
from moe_dispatch import latencies, moe_alone

from tinymoe.data import load_dataset
from tinymoe.export import calibrate_capacity, op_table, tflm_invoke, to_tflite
from tinymoe.models import create_model, moe_layers, trace, with_dispatch
from tinymoe.pipeline import load_model


def layer_macs(model, images, factors):
    """Per MoE layer: MACs converted alone at its factor, one expert over all its tokens."""
    _, infos = trace(model, images[:4])
    rows = {}
    for key, layer in moe_layers(model).items():
        tokens = infos[key]["ffn_input"][:1]  # [1, P, N, d]
        sparse = moe_alone(layer, tokens, "sparse", factors[key])
        positions, patches, dim = tokens.shape[1:]
        one_expert = positions * patches * 2 * dim * layer.hidden_dim
        macs = int(sum(row["macs"] for row in op_table(sparse)))
        rows[key] = {"macs": macs, "one_expert_macs": int(one_expert),
                     "ratio": macs / one_expert, "bound": factors[key] + 0.1,
                     "tokens": [int(positions), int(patches), int(dim)]}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained MoE .keras model")
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dense", default="mobilevit_v2_050",
                        help="the dense backbone of the same width, for latency")
    parser.add_argument("--min-agreement", type=float, default=0.98)
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()

    model = load_model(args.model)
    data = load_dataset(args.data, args.size)
    x_train = data.split("train")[0][:args.calibration_images].astype(np.float32)
    x_val, y_val = data.split("val")
    images = np.concatenate([x_train, x_val]).astype(np.float32)

    began = time.time()
    sparse_bytes, report = calibrate_capacity(model, images, x_train, args.min_agreement)
    calibration_s = time.time() - began
    masked_bytes = to_tflite(with_dispatch(model, "masked"), x_train)
    sparse_top1 = np.argmax(tflm_invoke(sparse_bytes, x_val), axis=1)
    masked_top1 = np.argmax(tflm_invoke(masked_bytes, x_val), axis=1)
    check = {"images": int(len(x_val)),
             "agreement": float(np.mean(sparse_top1 == masked_top1)),
             "sparse_val_top1": float(np.mean(sparse_top1 == y_val)),
             "masked_val_top1": float(np.mean(masked_top1 == y_val))}
    print(report.lines(), check, flush=True)

    macs = layer_macs(model, x_train, report.factors)
    largest = max(macs, key=lambda key: macs[key]["one_expert_macs"])
    _, infos = trace(model, x_train[:4])
    tokens = infos[largest]["ffn_input"][:32]
    layer = moe_layers(model)[largest]
    dense = create_model(args.dense, num_classes=data.num_classes,
                         input_shape=model.input_shape[1:])
    models = {"moe_layer_masked": moe_alone(layer, tokens, "masked", 1.0),
              "moe_layer_sparse": moe_alone(layer, tokens, "sparse", report.factors[largest]),
              "model_masked": masked_bytes, "model_sparse": sparse_bytes,
              "dense": to_tflite(dense, x_train[:64])}
    ms = latencies(models, args.runs)
    latency = {"median_ms": ms, "runs": args.runs, "moe_layer": largest,
               "moe_layer_sparse_over_masked": ms["moe_layer_sparse"] / ms["moe_layer_masked"],
               "model_sparse_over_dense": ms["model_sparse"] / ms["dense"],
               "model_sparse_over_masked": ms["model_sparse"] / ms["model_masked"]}

    meta = run_meta(start, size=args.size, calibration_s=round(calibration_s, 1))
    meta["machine"] += ", TFLite Micro host interpreter"
    result = {"meta": meta, "calibration": report.as_dict(), "tflm_check": check,
              "macs": macs, "latency": latency}
    lines = ["# Expert capacity calibrated at export", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s (calibration {meta['calibration_s']} s)", "",
             f"Calibrated on {report.images} images (the {len(x_train)} int8 calibration "
             f"images of the training split and the {len(x_val)} validation images; no test "
             f"images), target agreement {report.min_agreement:g}, candidates scored in "
             f"LiteRT's optimised int8 kernels, then confirmed in TFLite Micro (all "
             f"{report.images} images: agreement {report.agreement:.4f}).", "",
             "| MoE layer | routing | units | factor | slots per expert | agreement (LiteRT) | "
             "tried (factor: agreement) | MACs / one expert | bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in report.layers.items():
        tried = "LiteRT " + ", ".join(f"{f:g}: {a:.4f}" for f, a in row["tried"])
        if "tflm_tried" in row:
            tried += "; TFLM " + ", ".join(f"{f:g}: {a:.4f}" for f, a in row["tflm_tried"])
        lines.append(f"| {key} | {row['routing']} | {row['units']} | "
                     f"{row['capacity_factor']:g} | {row['slots']} | {row['agreement']:.4f} | "
                     f"{tried} | {macs[key]['ratio']:.3f} | {macs[key]['bound']:.2f} |")
    lines += ["", f"Check in TFLite Micro on the validation split ({check['images']} images): "
              f"sparse/masked int8 top-1 agreement **{check['agreement']:.4f}**; val top-1 "
              f"sparse {check['sparse_val_top1']:.3f}, masked {check['masked_val_top1']:.3f}.",
              "", f"Host latency, median of {args.runs} alternating runs "
              f"(largest MoE layer: {largest}).", "", "| model | median ms |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in ms.items()]
    lines += ["", f"- largest MoE layer alone, sparse / masked: "
              f"{latency['moe_layer_sparse_over_masked']:.3f} (target <= 0.55)",
              f"- whole model sparse / dense backbone ({args.dense}): "
              f"{latency['model_sparse_over_dense']:.3f} (target <= 1.3)",
              f"- whole model sparse / masked: {latency['model_sparse_over_masked']:.3f}"]
    write_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
