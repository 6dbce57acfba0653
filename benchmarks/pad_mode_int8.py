"""What the padding of the attention blocks costs in float and in int8. Run by hand; writes JSON
(one row per pad mode, seed and split, with ``float_top1`` and ``int8_top1``) and a Markdown
table.

At 96x96 the last attention stage sees a 3x3 map, which 2x2 patches cannot tile. Padded with
zeros ("zeros"), 7 of its 16 pixel tokens are all zero: their layer norm variance is 0, so
the reciprocal square root of epsilon alone (316 for 1e-5) sets the int8 range of the RSQRT
that the real tokens' values share. Padded with copies of the last row and column ("edge",
MIRROR_PAD), no token has zero variance. Each mode trains the same model from the same seed
with the same recipe; post-training int8 (200 training images calibrate) runs in TFLite
Micro. The checkpoint is chosen on val; test is reported only.

    python benchmarks/pad_mode_int8.py --size 96 --epochs 10 --seeds 0 1 \\
        --out benchmarks/results/pad_mode_int8_96px
"""

import argparse
import time

from common import run_meta, write_results

import tinymoe
from tinymoe.augment import AugmentConfig
from tinymoe.data import load_dataset
from tinymoe.export import to_tflite
from tinymoe.layers.patches import PAD_MODES
from tinymoe.models import create_model
from tinymoe.optimize import quantising_ops
from tinymoe.pipeline import evaluate, evaluate_tflite, load_model, train_run
from tinymoe.train import TrainConfig


def largest_rsqrt_range(tflite_bytes):
    """The widest int8 range (255 steps x scale) of any RSQRT output in the model."""
    return max(255 * scale for op, _, scale, _ in quantising_ops(tflite_bytes)
               if op == "RSQRT")


def mode_rows(data, mode, seed, args):
    start = time.time()
    tinymoe.keras.utils.set_random_seed(seed)
    model = create_model(args.model, num_classes=data.num_classes,
                         input_shape=(args.size, args.size, 3), pad_mode=mode)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate)
    _, summary = train_run(model, data, f"{args.out}/runs/seed{seed}/{mode}", recipe,
                           AugmentConfig(crop=True, flip=True), verbose=2)
    best = load_model(summary["best"])
    tflite_bytes = to_tflite(best, data.split("train")[0][:200])
    rsqrt_range = largest_rsqrt_range(tflite_bytes)
    rows = []
    for split in ("val", "test"):
        x, y = data.split(split)
        rows.append({"model": args.model, "pad_mode": mode, "seed": seed, "split": split,
                     "float_top1": evaluate(best, x, y, data.num_classes),
                     "int8_top1": evaluate_tflite(tflite_bytes, x, y),
                     "rsqrt_range": rsqrt_range,
                     "train_images_per_s": summary["images_per_second"],
                     "wall_s": round(time.time() - start, 1)})
        rows[-1]["gap"] = rows[-1]["int8_top1"] - rows[-1]["float_top1"]
        print(rows[-1], flush=True)
    return rows


def markdown(rows, meta):
    lines = [f"# Padding of the attention blocks, float and int8, {meta['size']}x{meta['size']}",
             "", f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s; {meta['epochs']} epochs per model", "",
             "float: the checkpoint with the best val top-1; int8: post-training, TFLite Micro. "
             "RSQRT range: the widest int8 range of a layer norm's reciprocal square root.", "",
             "| model | pad mode | seed | val float | val int8 | val gap | test float | "
             "test int8 | test gap | RSQRT range |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["pad_mode"], r["seed"]) for r in rows):
        pair = {r["split"]: r for r in rows if (r["model"], r["pad_mode"], r["seed"]) == key}
        if set(pair) != {"val", "test"}:
            continue
        cells = [f"{pair[s][k]:.3f}" for s in ("val", "test")
                 for k in ("float_top1", "int8_top1")]
        cells = cells[:2] + [f"{100 * pair['val']['gap']:+.1f}"] + cells[2:] + [
            f"{100 * pair['test']['gap']:+.1f}", f"{pair['val']['rsqrt_range']:.1f}"]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--model", default="mobilevit_v2_050")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--modes", nargs="+", choices=PAD_MODES, default=list(PAD_MODES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    data = load_dataset(args.data, args.size)
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            rows.extend(mode_rows(data, mode, seed, args))
            meta = run_meta(start, size=args.size, epochs=args.epochs)
            write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
