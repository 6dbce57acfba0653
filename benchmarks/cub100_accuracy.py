"""Accuracy against size on cub100: dense MobileViTv2 0.5 and 1.0, and MoE-0.5 upcycled with a
random or a cluster-initialised router. Run by hand; writes JSON and a Markdown table.

The claim tested (Mensah et al., arXiv 2411.07834): the MoE model, with at most a quarter of
dense-1.0's parameters, is within 1 point of its accuracy, and the clustered router beats
the random one. Model choices use the validation split; test accuracy is reported only.

Example (the full run, hours on 2 cores):
    python benchmarks/cub100_accuracy.py --size 128 --epochs 30 --seeds 0 1
Smoke run (minutes):
    python benchmarks/cub100_accuracy.py --size 64 --epochs 1 --per-class 6 --out /tmp/smoke
"""

import argparse
import dataclasses
import time

import numpy as np
from common import run_meta, write_results

import tinymoe
from tinymoe.augment import AugmentConfig
from tinymoe.data import load_dataset
from tinymoe.models import MoEConfig
from tinymoe.pipeline import evaluate, load_model, train_run, upcycle_run
from tinymoe.train import TrainConfig

VARIANTS = ("dense_050", "dense_100", "moe_050_random", "moe_050_cluster")


def subset(data, per_class):
    """At most ``per_class`` images of each class in each split (for smoke runs)."""
    keep = np.zeros(len(data.labels), bool)
    for split in ("train", "val", "test"):
        for c in range(data.num_classes):
            idx = np.flatnonzero((data.labels == c) & (data.splits == split))[:per_class]
            keep[idx] = True
    return dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep],
                               splits=data.splits[keep], paths=data.paths[keep])


def run_seed(data, seed, args, out):
    tinymoe.keras.utils.set_random_seed(seed)
    augment = AugmentConfig(crop=True, flip=True, rand_augment=args.rand_augment)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate)
    fine_tune = dataclasses.replace(recipe, epochs=args.moe_epochs,
                                    learning_rate=args.learning_rate / 4, warmup_epochs=0.5)
    x_test, y_test = data.split("test")
    rows = []

    def record(name, summary, start, epochs):
        best = load_model(summary["best"])
        rows.append({"variant": name, "seed": seed, "params": summary["params"],
                     "macs": summary["macs"], "epochs": epochs,
                     "train_images_per_s": summary["images_per_second"],
                     "val_top1": summary["val_accuracy"],
                     "test_top1": evaluate(best, x_test, y_test, data.num_classes),
                     "wall_s": round(time.time() - start, 1)})
        print(rows[-1], flush=True)

    wanted = set(args.variants)
    if wanted & {"dense_050", "moe_050_random", "moe_050_cluster"}:
        start = time.time()
        _, dense = train_run("mobilevit_v2_050", data, f"{out}/seed{seed}/dense_050", recipe,
                             augment, verbose=2)
        if "dense_050" in wanted:
            record("dense_050", dense, start, args.epochs)
        moe_config = MoEConfig(num_experts=args.experts, top_k=1)
        for router in ("random", "cluster"):
            name = f"moe_050_{router}"
            if name not in wanted:
                continue
            start = time.time()
            path = f"{out}/seed{seed}/{name}_init.keras"
            upcycle_run(dense["best"], data, path, moe_config, router=router,
                        num_images=args.cluster_images, seed=seed)
            _, summary = train_run(path, data, f"{out}/seed{seed}/{name}", fine_tune, augment,
                                   verbose=2)
            record(name, summary, start, f"{args.epochs}+{args.moe_epochs}")
    if "dense_100" in wanted:
        start = time.time()
        _, summary = train_run("mobilevit_v2_100", data, f"{out}/seed{seed}/dense_100", recipe,
                               augment, verbose=2)
        record("dense_100", summary, start, args.epochs)
    return rows


def markdown(rows, meta):
    lines = [f"# cub100 accuracy ({meta['size']}x{meta['size']})", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s; seeds {meta['seeds']}; {meta['images']}", "",
             "| variant | seed | params | MACs | epochs | train img/s | val top-1 | test top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['epochs']} | {r['train_images_per_s']} | {r['val_top1']:.3f} | "
                     f"{r['test_top1']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--moe-epochs", type=int, default=10, help="fine-tuning after upcycling")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rand-augment", action="store_true")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--cluster-images", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--per-class", type=int, default=0, help="smoke runs: images per class")
    parser.add_argument("--out", default="benchmarks/results/cub100_accuracy")
    args = parser.parse_args(argv)

    start = time.time()
    data = load_dataset(args.data, args.size)
    if args.per_class:
        data = subset(data, args.per_class)
    rows = []
    for seed in args.seeds:
        rows.extend(run_seed(data, seed, args, f"{args.out}/runs"))
    meta = run_meta(start, size=args.size, seeds=args.seeds,
                    images={s: int((data.splits == s).sum()) for s in ("train", "val", "test")})
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
