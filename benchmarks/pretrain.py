"""Pretraining on Tiny ImageNet-200: the backbones whose weights tinymoe ships.

The data: Tiny ImageNet-200 (ImageNet classes, 500 training and 50 validation JPEGs each,
64x64), from the public GitHub repository rangeetpan/IMagenet; that copy holds 202 classes
(101,000 training, 10,100 validation images), all of which are used. Its terms are ImageNet's:
non-commercial research and education. Never commit the images. To get it:
    fetch github:rangeetpan/IMagenet          # the tool library's fetch; prints <mirror>
    git --git-dir=<mirror> archive HEAD tiny-imagenet-200 | tar -x -C /work/data

The images are decoded once into a cache (``~/.cache/tinymoe``, 1.2 GB at 64x64). Training
uses the package's recipe (:mod:`tinymoe.train`: AdamW, warm-up and cosine, label smoothing)
with crop and flip; it backs up after every epoch and a run started again with the same
``--out`` goes on from the last finished epoch (Keras ``BackupAndRestore``). The best epoch by
Tiny ImageNet val top-1 is kept (``best.keras``); the val split chooses nothing else.

Dense models (and the CNN peer):
    python benchmarks/pretrain.py --data /work/data/tiny-imagenet-200 \
        --model mobilevit_v2_mcu --epochs 15 --save-epochs 10 --out runs/pretrain
An MoE upcycled (cluster router) from the dense run's epoch-10 checkpoint, resuming the same
schedule to epoch 15, so that its experts see the whole of Tiny ImageNet:
    python benchmarks/pretrain.py ... --model mobilevit_v2_mcu_moe --epochs 15 \
        --upcycle runs/pretrain/mobilevit_v2_mcu_layernorm/epoch10.keras --initial-epoch 10
Ship the best epoch as the package's ``tinyimagenet`` weights (float16, with its card):
    python benchmarks/pretrain.py ... --model mobilevit_v2_mcu --ship

Writes ``<out>/<model>/`` (best.keras, log.csv, summary.json) and, with --ship,
``tinymoe/weights/<model>.tinyimagenet.npz`` and ``.json``.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from harness import cnn_peer, run_meta

import tinymoe
from tinymoe.augment import AugmentConfig, make_dataset
from tinymoe.backend import keras, tf
from tinymoe.data import ImageData
from tinymoe.files import atomic_path, write_json
from tinymoe.models import create_model, get_config, list_models
from tinymoe.pipeline import evaluate, load_model
from tinymoe.progress import progress_bar
from tinymoe.train import TrainConfig, fit, stream_seed

SOURCE = "Tiny ImageNet-200 (github.com/rangeetpan/IMagenet, tiny-imagenet-200/)"
LICENCE = ("Tiny ImageNet is a subset of ImageNet; its terms are ImageNet's: non-commercial "
           "research and educational use only.")
PEERS = {"mobilenet_v3_small_070": 0.7, "mobilenet_v3_small_100": 1.0}


def _decode(paths, size):
    """uint8 ``[N, size, size, 3]`` from JPEG files, decoded in parallel by tf.data."""
    def read(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        if size != 64:
            image = tf.image.resize(image, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255),
                       tf.uint8)

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        read, num_parallel_calls=tf.data.AUTOTUNE).batch(1000)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    done = 0
    with progress_bar(total=len(paths), desc="decoding Tiny ImageNet", unit="img") as bar:
        for batch in dataset:
            out[done:done + len(batch)] = batch.numpy()
            done += len(batch)
            bar.update(len(batch))
    return out


def load_tiny_imagenet(root, size=64, cache_dir="~/.cache/tinymoe"):
    """Tiny ImageNet-200's train (100,000) and val (10,000) images as :class:`ImageData`.

    Its test images have no labels and are not used. Decoded once and cached as ``.npy``.
    """
    train_dir = os.path.join(root, "train")
    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not (os.path.isdir(train_dir) and os.path.isfile(annotations)):
        raise ValueError(f"{root!r} is not a tiny-imagenet-200 folder (train/ and "
                         f"val/val_annotations.txt); see this script's docstring.")
    wnids = sorted(d for d in os.listdir(train_dir) if d.startswith("n"))
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels, splits = [], [], []
    for wnid in wnids:
        folder = os.path.join(train_dir, wnid, "images")
        for name in sorted(os.listdir(folder)):
            paths.append(os.path.join(folder, name))
            labels.append(index[wnid])
            splits.append("train")
    with open(annotations) as handle:
        for line in handle:
            name, wnid = line.split("\t")[:2]
            paths.append(os.path.join(root, "val", "images", name))
            labels.append(index[wnid])
            splits.append("val")
    cache = os.path.join(os.path.expanduser(cache_dir),
                         f"tiny-imagenet-200_{size}px_{len(paths)}.npy")
    if os.path.isfile(cache):
        images = np.load(cache, mmap_mode=None)
    else:
        images = _decode(paths, size)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
            np.save(handle, images)
    names = _class_words(root, wnids)
    return ImageData(images, np.asarray(labels, np.int32), np.asarray(splits), names,
                     np.asarray(paths))


def _class_words(root, wnids):
    """``wnid: first words`` names (words.txt), e.g. "n01443537 goldfish"."""
    words = {}
    path = os.path.join(root, "words.txt")
    if os.path.isfile(path):
        with open(path) as handle:
            for line in handle:
                wnid, text = line.rstrip("\n").split("\t", 1)
                words[wnid] = text.split(",")[0].strip()
    return [f"{w} {words[w]}" if w in words else w for w in wnids]


def build(args, data):
    """The model to pretrain: registry name, CNN peer, or an MoE upcycled from a checkpoint."""
    shape = (args.size, args.size, 3)
    if args.upcycle:
        from tinymoe.routing import upcycle

        dense = load_model(args.upcycle)
        x_train, y_train = data.split("train")
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(len(x_train), args.cluster_images, replace=False)
        labels = ({"labels": y_train[pick], "num_classes": data.num_classes}
                  if args.router == "superclass" else {})
        moe, report = upcycle(dense, moe_config(args), x_train[pick], router=args.router,
                              seed=args.seed, noise=args.noise, **labels)
        print(f"Upcycled {args.upcycle} with a {report.router} router: {report.layers}")
        # Renamed as create_model names it, so that its weights load into create_model's;
        # its config keeps what upcycling put there (super-classes).
        config = moe.get_config()
        config["name"] = args.model
        model = moe.__class__.from_config(config)
        model.set_weights(moe.get_weights())
        return model
    if args.model in PEERS:
        return cnn_peer(data.num_classes, args.size, PEERS[args.model])
    if args.routing:
        return create_model(args.model, num_classes=data.num_classes, input_shape=shape,
                            moe=moe_config(args))
    return create_model(args.model, num_classes=data.num_classes, input_shape=shape)


def moe_config(args):
    """The registered model's MoE configuration, with --routing if given."""
    config = get_config(args.model).moe
    if config is None:
        if args.routing:
            raise SystemExit(f"--routing: {args.model} has no experts to route.")
        return None
    return dataclasses.replace(config, routing=args.routing) if args.routing else config


def run_name(args):
    """The run's folder and results name: the model, its routing when --routing says, and
    its router when not the clustered one."""
    name = f"{args.model}_{args.routing}" if args.routing else args.model
    name = name if args.router == "cluster" else f"{name}_{args.router}"
    return f"{name}_noise{args.noise:g}" if args.noise else name


def ship(args, data, run_dir):
    """Writes the best epoch's weights (float16) and card into tinymoe/weights/."""
    from tinymoe.weights import WEIGHTS_DIR, save_weights

    best = load_model(os.path.join(run_dir, "best.keras"))
    with open(os.path.join(run_dir, "summary.json")) as handle:
        summary = json.load(handle)
    x_val, y_val = data.split("val")
    card = {
        "model": args.model, "weights": "tinyimagenet", "data": SOURCE,
        "licence": LICENCE, "input_size": args.size,
        "recipe": summary["recipe"], "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "tinyimagenet_val_top1_float32": evaluate(best, x_val, y_val, data.num_classes),
        "command": summary["command"],
    }
    path = save_weights(best, os.path.join(WEIGHTS_DIR, f"{args.model}.tinyimagenet"), card)
    # float16 storage must not cost accuracy: the same model with the stored weights.
    from tinymoe.weights import load_weights

    restored = create_model(args.model, num_classes=data.num_classes,
                            input_shape=(args.size, args.size, 3))
    load_weights(restored, path, include_top=True)
    card["tinyimagenet_val_top1_float16"] = evaluate(restored, x_val, y_val, data.num_classes)
    save_weights(best, path[:-len(".npz")], card)
    print(json.dumps(card, indent=1))


def resumable_callbacks(run_dir, save_epochs):
    """Back-up after each epoch (a new run with the same folder resumes from it), the best
    epoch by val top-1, a CSV log and the ``save_epochs`` checkpoints; on a resumed run the
    log is appended to and the best so far stays the bar to beat."""
    from tinymoe.train import EpochCheckpoint

    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, "log.csv")
    rows = resumed_log(run_dir)
    best_so_far = float(np.max(rows["val_accuracy"])) if rows is not None else None
    return [keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
            keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "best.keras"),
                                            monitor="val_accuracy", mode="max",
                                            save_best_only=True,
                                            initial_value_threshold=best_so_far),
            keras.callbacks.CSVLogger(log, append=best_so_far is not None),
            EpochCheckpoint(run_dir, save_epochs)]


def resumed_log(run_dir):
    """The epochs a stopped run in ``run_dir`` logged, when a back-up is there to resume
    from (``BackupAndRestore``); None for a fresh run."""
    log = os.path.join(run_dir, "log.csv")
    if not (os.path.isdir(os.path.join(run_dir, "backup")) and os.path.isfile(log)):
        return None
    rows = np.atleast_1d(np.genfromtxt(log, delimiter=",", names=True))
    return rows if rows.size else None


def resume_epoch(run_dir, initial_epoch=0):
    """The epoch a run in ``run_dir`` starts at: after the last one a resumable log
    records, else ``initial_epoch``."""
    rows = resumed_log(run_dir)
    return initial_epoch if rows is None else max(initial_epoch, int(rows["epoch"].max()) + 1)


def write_report(run_dir, out):
    """``out.json`` and ``out.md``: a finished run's summary and its per-epoch log."""
    from harness import write_results

    with open(os.path.join(run_dir, "summary.json")) as handle:
        summary = json.load(handle)
    log = np.atleast_1d(np.genfromtxt(os.path.join(run_dir, "log.csv"), delimiter=",",
                                      names=True))
    epochs = [{key: round(float(row[key]), 4) for key in log.dtype.names} for row in log]
    lines = [f"# Pretraining {summary['model']} on Tiny ImageNet-200 "
             f"({summary['size']}x{summary['size']})", "",
             f"Command: `{summary['command']}`  ",
             f"Machine: {summary['machine']}; wall time {summary['wall_s']} s  ",
             f"Data: {SOURCE}: {summary['train_images']:,} training and "
             f"{summary['val_images']:,} validation images  ",
             f"Best epoch {summary['best_epoch']}: val top-1 {summary['val_top1']:.4f}", "",
             "| epoch | train top-1 | train loss | val top-1 | val loss |",
             "|---|---|---|---|---|"]
    for row in epochs:
        lines.append(f"| {int(row['epoch']) + 1} | {row['accuracy']:.4f} | {row['loss']:.3f} |"
                     f" {row['val_accuracy']:.4f} | {row['val_loss']:.3f} |")
    write_results(out, {"meta": summary, "epochs": epochs}, "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the tiny-imagenet-200 folder")
    parser.add_argument("--model", required=True,
                        choices=sorted(set(list_models()) | set(PEERS)))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--save-epochs", type=int, nargs="*", default=[],
                        help="also keep epoch<N>.keras (to upcycle an MoE from)")
    parser.add_argument("--upcycle", help="a dense checkpoint to upcycle --model (an MoE) from")
    parser.add_argument("--routing", choices=("patch", "token", "image", "auto"),
                        help="the MoE's routing, if not the registered model's (the run "
                             "folder and results take it as a suffix)")
    parser.add_argument("--router", choices=("cluster", "superclass"), default="cluster",
                        help="the upcycled router: clustered patches (or images), or "
                             "super-classes the router then learns to predict (per-image "
                             "routing; see tinymoe.routing.upcycle)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="upcycled experts: the dense weights plus Gaussian noise of this "
                             "times each weight's standard deviation, to break their symmetry")
    parser.add_argument("--initial-epoch", type=int, default=0,
                        help="with --upcycle: resume the schedule here")
    parser.add_argument("--cluster-images", type=int, default=2048)
    parser.add_argument("--max-train", type=int, default=0, help="smoke runs: images used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/pretrain")
    parser.add_argument("--results", default=None, metavar="OUT",
                        help="results file stem (default: benchmarks/results/"
                             "pretrain_tinyimagenet_<model>)")
    parser.add_argument("--report", action="store_true",
                        help="only write the finished run's results files")
    parser.add_argument("--ship", action="store_true",
                        help="only write the finished run's weights into tinymoe/weights/")
    args = parser.parse_args(argv)

    run_dir = os.path.join(args.out, run_name(args))
    results = args.results or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "results", f"pretrain_tinyimagenet_{run_name(args)}")
    if args.report:
        return write_report(run_dir, results)
    start = time.time()
    data = load_tiny_imagenet(args.data, args.size)
    if args.max_train:
        keep = (np.arange(len(data.labels)) % (len(data.labels) // args.max_train + 1) == 0)
        data = dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep],
                                   splits=data.splits[keep], paths=data.paths[keep])
    if args.ship:
        return ship(args, data, run_dir)
    keras.utils.set_random_seed(args.seed)
    model = build(args, data)  # upcycling reseeds, so the model comes before the data
    # A run resumed at --initial-epoch, or from its back-up after a stop, gets batches of
    # its own, not those its weights have already trained on.
    data_seed = stream_seed(args.seed, resume_epoch(run_dir, args.initial_epoch))
    keras.utils.set_random_seed(data_seed)
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
                         initial_epoch=args.initial_epoch, save_epochs=tuple(args.save_epochs))
    augment = AugmentConfig(crop=True, crop_area=(0.35, 1.0), flip=True)
    x_train, y_train = data.split("train")
    x_val, y_val = data.split("val")
    train = make_dataset(x_train, y_train, data.num_classes, recipe.batch_size, training=True,
                         augment=augment, seed=data_seed)
    val = make_dataset(x_val, y_val, data.num_classes, 256)
    verbose = 1 if sys.stdout.isatty() else 2
    fit(model, train, val, dataclasses.replace(recipe, save_epochs=()), None, verbose=verbose,
        callbacks=resumable_callbacks(run_dir, recipe.save_epochs))
    log = np.genfromtxt(os.path.join(run_dir, "log.csv"), delimiter=",", names=True)
    log = np.atleast_1d(log)
    best_row = log[int(np.argmax(log["val_accuracy"]))]
    summary = {
        **run_meta(start), "model": args.model, "seed": args.seed, "routing": args.routing,
        "size": args.size, "epochs": args.epochs,
        "initial_epoch": args.initial_epoch, "upcycled_from": args.upcycle,
        "router": args.router if args.upcycle else None,
        "noise": args.noise if args.upcycle else None,
        "best_epoch": int(best_row["epoch"]) + 1,
        "val_top1": float(best_row["val_accuracy"]),
        "recipe": {**dataclasses.asdict(recipe), "augment": dataclasses.asdict(augment)},
        "train_images": int(len(x_train)), "val_images": int(len(x_val)),
        "params": int(model.count_params()),
    }
    write_json(os.path.join(run_dir, "summary.json"), summary)
    write_report(run_dir, results)
    return summary


if __name__ == "__main__":
    main()
