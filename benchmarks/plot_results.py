"""The README figure: cub100 test top-1 against size, from committed cub100_accuracy results.

Each model is one marker at the mean over seeds, with a bar from the lowest to the highest
seed; int8 top-1 in TFLite Micro where the results have it (else float).

    python benchmarks/plot_results.py benchmarks/results/cub100_128px_full.json \\
        --x flash --out benchmarks/results/accuracy_vs_flash.png
"""

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinymoe.files import atomic_path  # noqa: E402

LABELS = {"dense_050": "dense MobileViTv2-0.5", "dense_100": "dense MobileViTv2-1.0",
          "moe_050_random": "MoE-0.5, random router",
          "moe_050_cluster": "MoE-0.5, clustered router",
          "mcu_dense": "MCU dense twin", "mcu_moe_cluster": "MCU flagship (MoE)",
          "mcu_wide": "MCU wide (dense)", "mcu_wide_moe_cluster": "MCU wide + experts",
          "cnn_peer": "MobileNetV3-Small 0.7 (CNN peer)",
          "cnn_peer_100": "MobileNetV3-Small 1.0 (CNN peer)"}
AXES = {"params": ("params", 1e6, "parameters (millions)"),
        "flash": ("device_model_bytes", 1e3, "int8 model array (KB)")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files from cub100_accuracy.py")
    parser.add_argument("--x", choices=sorted(AXES), default="params")
    parser.add_argument("--budget", type=float, default=900,
                        help="with --x flash: the flash budget to draw, KB (0 to omit)")
    parser.add_argument("--baseline", type=float, default=0.0,
                        help="a test top-1 to draw as a line (0 to omit)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    key, unit, xlabel = AXES[args.x]
    points, titles, int8 = defaultdict(list), set(), True
    for path in args.results:
        with open(path) as handle:
            result = json.load(handle)
        titles.add(f"{result['meta']['size']}px")
        int8 = int8 and all("int8_test_top1" in row for row in result["rows"])
        for row in result["rows"]:
            points[row["variant"]].append(row)
    metric = "int8_test_top1" if int8 else "test_top1"
    figure, axes = plt.subplots(figsize=(6.8, 4.4))
    for variant, rows in points.items():
        x = np.mean([row[key] for row in rows]) / unit
        top1 = np.array([row[metric] for row in rows]) * 100
        axes.errorbar([x], [top1.mean()], yerr=[[top1.mean() - top1.min()],
                                                [top1.max() - top1.mean()]],
                      fmt="o", capsize=3, label=f"{LABELS.get(variant, variant)} "
                                                 f"({len(rows)} seed{'s' * (len(rows) > 1)})")
    if args.x == "flash" and args.budget:
        axes.axvline(args.budget, color="grey", linestyle=":", linewidth=1,
                     label=f"{args.budget:.0f} KB budget")
    if args.baseline:
        axes.axhline(args.baseline * 100, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"cub100 test top-1, {'int8 in TFLM' if int8 else 'float'} (%)")
    axes.set_title(f"Accuracy against size on cub100 ({', '.join(sorted(titles))})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(args.out) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    print(args.out)


if __name__ == "__main__":
    main()
