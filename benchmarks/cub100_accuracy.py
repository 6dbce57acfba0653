"""Accuracy against size on cub100: dense MobileViTv2 0.5 and 1.0, and MoE-0.5 upcycled with a
random or a cluster-initialised router; the microcontroller flagship and its dense twin; and
the CNN a TinyML user would pick at that budget (Keras Applications MobileNetV3-Small,
minimalistic, from scratch, batch-norm momentum 0.99, the same data, recipe and epochs).
Run by hand; writes JSON and a Markdown table.

With --int8, each model is also converted to full int8 (post-training, 200 training images
calibrate; MoE models with sparse dispatch) and scored on the test split in TFLite Micro;
with --device, the int8 model is measured on the Cortex-M3 build of the firmware app:
arena_used_bytes() and the model array as the firmware embeds it (stripped).

The claim tested (Mensah et al., arXiv 2411.07834): the MoE model, with at most a quarter of
dense-1.0's parameters, is within 1 point of its accuracy, and the clustered router beats
the random one. Model choices use the validation split; test accuracy is reported only.

The full-length comparison (about an hour per seed on 2 cores; one seed per run, each run
appends to the results file and the table shows the mean and spread over seeds):
    python benchmarks/cub100_accuracy.py --size 128 --epochs 30 --upcycle-at 20 --int8 \
        --seeds 0 --variants dense_050 moe_050_random moe_050_cluster mcu_dense \
        mcu_moe_cluster cnn_peer cnn_peer_100 --out benchmarks/results/cub100_128px_full
The microcontroller comparison, one 12-epoch schedule, the MoE upcycled at epoch 8:
    python benchmarks/cub100_accuracy.py --size 128 --epochs 12 --upcycle-at 8 --int8 \
        --variants mcu_dense mcu_moe_cluster --out benchmarks/results/cub100_mcu_128px_resumed
The earlier microcontroller comparison (8 dense epochs, then 4 MoE epochs on a new schedule):
    python benchmarks/cub100_accuracy.py --size 128 --epochs 8 --moe-epochs 4 --int8 \
        --device --variants mcu_dense mcu_moe_cluster mcu_wide cnn_peer \
        --out benchmarks/results/cub100_mcu_128px_reduced
From the shipped Tiny ImageNet weights (FINE_TUNE's recipe): dense-0.5 and MoE-0.5 (the
pretrained MoE trained whole), and the MCU MoE's dense twin with three MoEs: the pretrained
MoE trained whole (mcu_moe), and per-image MoEs upcycled at epoch 20 from the fine-tuned
twin with a clustered or a super-class router:
    python benchmarks/cub100_accuracy.py --size 128 --epochs 30 --int8 --variants dense_050 \
        --seeds 0 1 --weights tinyimagenet --out benchmarks/results/finetune_dense050
    python benchmarks/cub100_accuracy.py --size 128 --epochs 30 --int8 --variants moe_050 \
        --seeds 0 1 --weights tinyimagenet --out benchmarks/results/finetune_moe050
    python benchmarks/cub100_accuracy.py --size 128 --epochs 30 --upcycle-at 20 --int8 \
        --variants mcu_dense mcu_moe mcu_moe_image mcu_moe_superclass --seeds 0 1 \
        --weights tinyimagenet --out benchmarks/results/finetune_mcu_moe
Smoke run (minutes):
    python benchmarks/cub100_accuracy.py --size 64 --epochs 1 --per-class 6 --out /tmp/smoke
"""

import argparse
import dataclasses
import os
import time

import numpy as np
from cub100_report import check_size, markdown
from harness import MCU_EXPAND1_LAYOUT, cnn_peer, publish

import tinymoe
from tinymoe.augment import AugmentConfig
from tinymoe.data import load_dataset
from tinymoe.models import MCU_SPEED_LAYOUT, MoEConfig, create_model, get_config
from tinymoe.pipeline import evaluate, load_model, train_run, upcycle_run
from tinymoe.train import TrainConfig

VARIANTS = ("dense_050", "dense_100", "moe_050", "moe_050_random", "moe_050_cluster", "mcu",
            "mcu_moe", "mcu_dense", "mcu_moe_cluster", "mcu_moe_image", "mcu_moe_superclass",
            "mcu_wide", "mcu_wide_moe_cluster", "cnn_peer", "cnn_peer_100")
# The speed work on the MCU model (benchmarks/mcu_speed.py counts their instructions): changes
# to its layer-norm form (config overrides of mobilevit_v2_mcu_layernorm), one at a time and
# combined. "bnpre": the transformer's pre-norms as batch norms (norm="batch"; the labels are
# those the runs in benchmarks/results were made with); "mixed": a fast layer norm before the
# attention, a folded batch norm before the feed-forward.
MCU_ABLATIONS = {
    "mcu_relu6": {"block_activation": "relu6"},
    "mcu_relu6_bnpre": {"block_activation": "relu6", "norm": "batch"},
    "mcu_fast_bnpre": {"block_activation": "relu6", "norm": "batch",
                       "layout": MCU_EXPAND1_LAYOUT},
    "mcu_bnpre_s3x1_96": {"block_activation": "relu6", "norm": "batch",
                          "layout": MCU_SPEED_LAYOUT},
    "mcu_mixed_s3x1_96": {"block_activation": "relu6", "norm": "mixed",
                          "layout": MCU_SPEED_LAYOUT},
}
VARIANTS += tuple(MCU_ABLATIONS)


def int8_columns(model, data, args):
    """Post-training int8 in TFLite Micro on the test split; Cortex-M3 arena and flash."""
    from tinymoe.export import strip_for_device, to_tflite
    from tinymoe.export.firmware_app import measure_on_device
    from tinymoe.models import has_experts, with_dispatch
    from tinymoe.pipeline import evaluate_tflite

    if has_experts(model):
        model = with_dispatch(model, "sparse", args.capacity_factor)
    tflite_bytes = to_tflite(model, data.split("train")[0][:200])
    x_test, y_test = data.split("test")
    row = {"int8_test_top1": evaluate_tflite(tflite_bytes, x_test, y_test),
           "tflite_bytes": len(tflite_bytes),
           "device_model_bytes": len(strip_for_device(tflite_bytes)[0])}
    if args.device:
        device = measure_on_device(tflite_bytes, "cortex-m3", arena_bytes=4_000_000 // 3)
        row.update(cortex_m3_arena_bytes=device["arena_bytes"],
                   cortex_m3_flash_bytes=device["flash_bytes"])
    return row


def subset(data, per_class):
    """At most ``per_class`` images of each class in each split (for smoke runs)."""
    keep = np.zeros(len(data.labels), bool)
    for split in ("train", "val", "test"):
        for c in range(data.num_classes):
            idx = np.flatnonzero((data.labels == c) & (data.splits == split))[:per_class]
            keep[idx] = True
    return dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep],
                               splits=data.splits[keep], paths=data.paths[keep])


def train(model, data, out_dir, config, augment, reuse, weights=None):
    """``train_run``'s summary; with ``reuse``, that of a finished run already in ``out_dir``
    (same epochs, its saved epochs present) instead of training again."""
    import json

    path = os.path.join(out_dir, "summary.json")
    if reuse and os.path.exists(path):
        with open(path) as handle:
            summary = json.load(handle)
        if summary["epochs"] == config.epochs and all(
                os.path.exists(os.path.join(out_dir, f"epoch{e}.keras"))
                for e in config.save_epochs):
            print(f"Reusing the finished run in {out_dir}", flush=True)
            return summary
    return train_run(model, data, out_dir, config, augment, verbose=2, weights=weights)[1]


def few_shot(data, per_class, seed=0):
    """At most ``per_class`` training images of each class, the same subset for every model
    and run seed (drawn once with ``seed``); val and test unchanged."""
    rng = np.random.default_rng(seed)
    keep = data.splits != "train"
    for c in range(data.num_classes):
        idx = np.flatnonzero((data.labels == c) & (data.splits == "train"))
        keep[rng.permutation(idx)[:per_class]] = True
    return dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep],
                               splits=data.splits[keep], paths=data.paths[keep])


def pretrained_peer(peer, path):
    """``peer`` with the weights of a pretrained peer (``.keras``), all but its classifier
    (the ``Logits`` convolution), matched by layer name."""
    source = load_model(path)
    for layer in peer.layers:
        if layer.weights and layer.name != "Logits":
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return peer


def upcycle_from(dense_summary, args):
    """The dense checkpoint an MoE starts from: epoch --upcycle-at, else the best epoch."""
    if args.upcycle_at:
        return os.path.join(os.path.dirname(dense_summary["best"]),
                            f"epoch{args.upcycle_at}.keras")
    return dense_summary["best"]


def upcycling(args):
    """How the experts leave their copies at upcycling (tinymoe.routing.upcycle)."""
    return {"noise": args.upcycle_noise, "reinit": args.upcycle_reinit}


def with_expert_dropout(moe_config, args):
    """``moe_config`` with --expert-dropout (dropout on the experts' hidden units)."""
    return dataclasses.replace(moe_config, expert_dropout=args.expert_dropout)


def run_seed(data, seed, args, out, publish=lambda rows: None):
    tinymoe.keras.utils.set_random_seed(seed)
    augment = AugmentConfig(crop=True, flip=True, rand_augment=args.rand_augment)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
                         label_smoothing=args.label_smoothing)
    if args.upcycle_at:
        # One schedule for all: the dense run saves epoch N, the MoE resumes there.
        recipe = dataclasses.replace(recipe, save_epochs=(args.upcycle_at,))
        fine_tune = dataclasses.replace(recipe, initial_epoch=args.upcycle_at, save_epochs=())
        moe_epochs = f"{args.upcycle_at}+{args.epochs - args.upcycle_at} resumed"
    else:
        fine_tune = dataclasses.replace(recipe, epochs=args.moe_epochs,
                                        learning_rate=args.moe_learning_rate or
                                        args.learning_rate / 4, warmup_epochs=0.5)
        moe_epochs = f"{args.epochs}+{args.moe_epochs}"
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
        if args.int8:
            rows[-1].update(int8_columns(best, data, args))
        print(rows[-1], flush=True)
        publish(rows)

    wanted = set(args.variants)
    if wanted & {"dense_050", "moe_050_random", "moe_050_cluster"}:
        start = time.time()
        dense = train("mobilevit_v2_050", data, f"{out}/seed{seed}/dense_050", recipe,
                      augment, args.reuse, weights=args.weights)
        if "dense_050" in wanted:
            record("dense_050", dense, start, args.epochs)
        moe_config = with_expert_dropout(MoEConfig(num_experts=args.experts, top_k=1), args)
        for router in ("random", "cluster"):
            name = f"moe_050_{router}"
            if name not in wanted:
                continue
            start = time.time()
            path = f"{out}/seed{seed}/{name}_init.keras"
            upcycle_run(upcycle_from(dense, args), data, path, moe_config, router=router,
                        num_images=args.cluster_images, seed=seed, **upcycling(args))
            summary = train(path, data, f"{out}/seed{seed}/{name}", fine_tune, augment,
                            args.reuse)
            record(name, summary, start, moe_epochs)
    # Compared against an upcycled MoE, which trained epochs + moe-epochs in all.
    compare = dataclasses.replace(recipe, save_epochs=(), epochs=args.compare_epochs or (
        args.epochs if args.upcycle_at else args.epochs + args.moe_epochs))
    # (dense variant, its registry name, {MoE variant upcycled from it: (MoE config, router)})
    per_image = dataclasses.replace(get_config("mobilevit_v2_mcu_moe").moe, routing="image")
    if "mcu" in wanted:
        start = time.time()
        summary = train("mobilevit_v2_mcu", data, f"{out}/seed{seed}/mcu", recipe, augment,
                        args.reuse, weights=args.weights)
        record("mcu", summary, start, args.epochs)
    # The registered MoEs trained whole on the dense schedule: with --weights their experts
    # and router start from their own pretraining (upcycled there, not here).
    for name, registered in (("mcu_moe", "mobilevit_v2_mcu_moe"),
                             ("moe_050", "mobilevit_v2_moe_050")):
        if name in wanted:
            start = time.time()
            summary = train(registered, data, f"{out}/seed{seed}/{name}", recipe, augment,
                            args.reuse, weights=args.weights)
            record(name, summary, start, args.epochs)
    for dense_name, registered, moes in (
            ("mcu_dense", "mobilevit_v2_mcu_layernorm",
             {"mcu_moe_cluster": (get_config("mobilevit_v2_mcu_moe").moe, "cluster"),
              "mcu_moe_image": (per_image, "cluster"),
              "mcu_moe_superclass": (per_image, "superclass")}),
            ("mcu_wide", "mobilevit_v2_mcu_wide",
             {"mcu_wide_moe_cluster": (get_config("mobilevit_v2_mcu_wide_moe").moe,
                                       "cluster")})):
        if not wanted & {dense_name, *moes}:
            continue
        start = time.time()
        # Without an MoE on one schedule, mcu_wide is the comparison for the MCU flagship.
        config = (recipe if wanted & set(moes) or dense_name == "mcu_dense" else compare)
        dense = train(registered, data, f"{out}/seed{seed}/{dense_name}", config, augment,
                      args.reuse, weights=args.weights)
        if dense_name in wanted:
            record(dense_name, dense, start, config.epochs)
        for moe_name, (moe_config, router) in moes.items():
            if moe_name not in wanted:
                continue
            start = time.time()
            path = f"{out}/seed{seed}/{moe_name}_init.keras"
            upcycle_run(upcycle_from(dense, args), data, path,
                        with_expert_dropout(moe_config, args), router=router,
                        num_images=args.cluster_images, seed=seed, **upcycling(args))
            summary = train(path, data, f"{out}/seed{seed}/{moe_name}", fine_tune, augment,
                            args.reuse)
            record(moe_name, summary, start, moe_epochs)
    for name, overrides in MCU_ABLATIONS.items():
        if name in wanted:
            start = time.time()
            model = create_model("mobilevit_v2_mcu_layernorm", num_classes=data.num_classes,
                                 input_shape=(args.size, args.size, 3), **overrides)
            summary = train(model, data, f"{out}/seed{seed}/{name}", recipe, augment,
                            args.reuse)
            record(name, summary, start, args.epochs)
    # The peer at the microcontroller budget (--peer-alpha), and at its default width 1.0.
    for name, alpha in (("cnn_peer", args.peer_alpha), ("cnn_peer_100", 1.0)):
        if name in wanted:
            start = time.time()
            peer = cnn_peer(data.num_classes, args.size, alpha)
            if args.peer_weights.get(name):
                peer = pretrained_peer(peer, args.peer_weights[name])
            summary = train(peer, data, f"{out}/seed{seed}/{name}", compare, augment,
                            args.reuse)
            record(name, summary, start, compare.epochs)
    if "dense_100" in wanted:
        start = time.time()
        summary = train("mobilevit_v2_100", data, f"{out}/seed{seed}/dense_100", recipe,
                        augment, args.reuse)
        record("dense_100", summary, start, args.epochs)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--moe-epochs", type=int, default=10, help="fine-tuning after upcycling")
    parser.add_argument("--upcycle-at", type=int, metavar="N",
                        help="one schedule for all: dense models train --epochs saving epoch "
                             "N, MoE models upcycle from it and resume the schedule to "
                             "--epochs (--moe-epochs, --moe-learning-rate unused)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weights", default=None,
                        help="start the MobileViTv2 models from these shipped weights "
                             "(tinyimagenet); the recipe then defaults to "
                             "tinymoe.train.FINE_TUNE")
    parser.add_argument("--peer-weights", nargs="+", default=[], metavar="VARIANT=KERAS",
                        help="start cnn_peer / cnn_peer_100 from a pretrained peer "
                             "(benchmarks/pretrain.py's best.keras)")
    parser.add_argument("--train-per-class", type=int, default=0, metavar="N",
                        help="few-shot: N training images per species (a fixed subset, "
                             "the same for every model and seed); val and test unchanged")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak (default 2e-3, or FINE_TUNE's with --weights)")
    parser.add_argument("--warmup-epochs", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--rand-augment", action="store_true")
    parser.add_argument("--moe-learning-rate", type=float,
                        help="peak learning rate of the fine-tuning after upcycling (default: "
                             "a quarter of --learning-rate)")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--cluster-images", type=int, default=1024)
    parser.add_argument("--upcycle-noise", type=float, default=0.0,
                        help="relative noise added to the expert copies at upcycling")
    parser.add_argument("--upcycle-reinit", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of each expert's hidden units drawn afresh at "
                             "upcycling (Drop-Upcycling)")
    parser.add_argument("--expert-dropout", type=float, default=0.0, metavar="RATE",
                        help="dropout on the upcycled experts' hidden units in training")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--per-class", type=int, default=0, help="smoke runs: images per class")
    parser.add_argument("--peer-alpha", type=float, default=0.7,
                        help="MobileNetV3-Small width: 0.7 is the largest whose int8 file "
                             "fits 900 KB at 128x128, 100 classes")
    parser.add_argument("--compare-epochs", type=int,
                        help="epochs of mcu_wide and cnn_peer, the models compared with the "
                             "upcycled MCU flagship (default: epochs + moe-epochs, its total)")
    parser.add_argument("--int8", action="store_true",
                        help="also post-training int8 top-1 on the test split in TFLite Micro")
    parser.add_argument("--device", action="store_true",
                        help="with --int8: Cortex-M3 arena and flash of the int8 model")
    parser.add_argument("--capacity-factor", type=float, default=1.25,
                        help="sparse dispatch of MoE models in int8")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished training runs under --out (a run that stopped "
                             "part-way through a seed goes on from there)")
    parser.add_argument("--out", default="benchmarks/results/cub100_accuracy")
    args = parser.parse_args(argv)
    from tinymoe.train import FINE_TUNE

    base = FINE_TUNE if args.weights else TrainConfig()
    for key in ("learning_rate", "warmup_epochs", "label_smoothing"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(base, key))
    args.peer_weights = dict(item.split("=", 1) for item in args.peer_weights)

    start = time.time()
    data = load_dataset(args.data, args.size)
    if args.per_class:
        data = subset(data, args.per_class)
    if args.train_per_class:
        data = few_shot(data, args.train_per_class)
    check_size(args.out, args.size)  # refuses a results file of another size up front
    rows = []

    def publish_rows(seed_rows):
        # Written after every model, so that a long run that stops keeps what it measured.
        merged = publish(
            args.out, rows + seed_rows, start, markdown, ("variant", "seed"), size=args.size,
            seeds=args.seeds, weights=args.weights, peer_weights=args.peer_weights or None,
            recipe={key: getattr(args, key) for key in (
                "learning_rate", "warmup_epochs", "label_smoothing")},
            train_per_class=args.train_per_class or None,
            upcycling=({**upcycling(args), "expert_dropout": args.expert_dropout}
                       if any(upcycling(args).values()) or args.expert_dropout else None),
            images={s: int((data.splits == s).sum()) for s in ("train", "val", "test")})
        return merged

    for seed in args.seeds:
        rows.extend(run_seed(data, seed, args, f"{args.out}/runs", publish_rows))


if __name__ == "__main__":
    main()
