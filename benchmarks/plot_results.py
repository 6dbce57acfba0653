"""The README figure: test top-1 against parameters, from the committed cub100 results.

    python benchmarks/plot_results.py benchmarks/results/cub100_accuracy_96px_reduced.json \\
        --out benchmarks/results/accuracy_vs_params.png
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
          "moe_050_cluster": "MoE-0.5, clustered router"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files from cub100_accuracy.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--baseline", type=float, default=0.564,
                        help="MobileNetV3-Small test top-1 to draw as a line (0 to omit)")
    args = parser.parse_args(argv)
    points, titles = defaultdict(list), []
    for path in args.results:
        with open(path) as handle:
            result = json.load(handle)
        titles.append(f"{result['meta']['size']}px")
        for row in result["rows"]:
            points[row["variant"]].append((row["params"], row["test_top1"]))
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for variant, values in sorted(points.items()):
        params, top1 = np.array(values).T
        axes.scatter(params / 1e6, top1 * 100, s=40, label=LABELS.get(variant, variant))
    if args.baseline:
        axes.axhline(args.baseline * 100, color="grey", linestyle="--", linewidth=1,
                     label="MobileNetV3-Small, 128px, 30 epochs (the bar)")
    axes.set_xlabel("parameters (millions)")
    axes.set_ylabel("cub100 test top-1 (%)")
    axes.set_title(f"Accuracy against size on cub100 ({', '.join(sorted(set(titles)))})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    with atomic_path(args.out) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    print(args.out)


if __name__ == "__main__":
    main()
