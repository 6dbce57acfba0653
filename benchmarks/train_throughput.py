"""Training throughput (images/s) and time to first step, today's code against a baseline
revision, in the same run. Run by hand on an idle machine; writes JSON and a Markdown table.

Each measurement runs in its own process: the baseline is the ``tinymoe`` package of
``--baseline-rev`` (unpacked with ``git archive`` into a temporary folder and put first on
``PYTHONPATH``), "new" the working tree's, any other variant that of the git revision it
names (to measure one change at a time); "+xla" or "-xla" after a name sets
``TrainConfig.jit_compile``. Variants alternate per model and
size, so both see the same machine state. A measurement is the real training path: the
cub100 train split through ``make_dataset`` (cached, shuffled, keras-cv crop and flip,
prefetched), the model compiled by ``compile_for_training`` (AdamW, schedule, smoothed
cross-entropy) and trained by Keras fit on the repeated dataset:

- time to first step: a fit of one step on a freshly built model (graph tracing, XLA
  compilation where enabled, pipeline start, one step);
- images/s: one warm-up window, then ``--windows`` timed windows of ``--steps`` steps; the
  median window.

``--profile`` instead records ``--steps`` steps of each model with the TensorFlow profiler
and prints where the op time goes (by layer kind, direction and op type) and how long the
step waited for input.

Example:
    python benchmarks/train_throughput.py --data ../shared/data/cub100 --sizes 96 128 \\
        --out benchmarks/results/train_throughput
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BASELINE_REV = "2a0ccec"  # the code before issue 18's training speed-ups
# A variant names its code, "baseline" (--baseline-rev), "new" (the working tree) or any git
# revision, optionally followed by "+xla" or "-xla" (TrainConfig.jit_compile on or off).
XLA_SUFFIXES = {"+xla": True, "-xla": False}


def parse_variant(variant):
    """``(code, TrainConfig overrides)`` of a variant name such as ``new+xla``."""
    for suffix, jit in XLA_SUFFIXES.items():
        if variant.endswith(suffix):
            return variant[:-len(suffix)], {"jit_compile": jit}
    return variant, {}


# (substring of an op's scope, layer kind); the first match names the op's layer.
LAYER_KINDS = (
    ("AdamW", "optimizer"), ("_norm/", "layer norm"), ("_mvit/norm/", "layer norm"),
    ("/attn/", "attention"), ("/ffn/", "feed-forward (dense)"), ("/moe/", "feed-forward (MoE)"),
    ("/unfold/", "patch unfold/fold"), ("/fold/", "patch unfold/fold"),
    ("/local_dw/", "MobileViT block convs"), ("/local_pw/", "MobileViT block convs"),
    ("/conv_proj/", "MobileViT block convs"), ("_mvit/", "transformer residuals"),
    ("_mv2_", "inverted residual blocks"), ("/stem/", "stem"), ("/classifier/", "head"),
    ("/pool/", "head"), ("/dropout/", "head"), ("/rescale/", "stem"), ("loss", "loss"),
)


def layer_kind(scope):
    if "/" not in scope:  # e.g. the sigmoid that swish's gradient recomputes
        return "unscoped (activation gradients)"
    return next((kind for key, kind in LAYER_KINDS if key in scope), "other")


def timed_fit(model, dataset, steps, epochs, callbacks=()):
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def worker(spec):
    """One measurement in this process, with whichever ``tinymoe`` is first on the path."""
    import tinymoe
    from tinymoe.augment import AugmentConfig, make_dataset
    from tinymoe.backend import keras, tf
    from tinymoe.models import create_model
    from tinymoe.train import TrainConfig, compile_for_training

    keras.utils.set_random_seed(0)
    images = np.load(spec["images"], mmap_mode="r")
    labels = np.load(spec["labels"])
    images = np.ascontiguousarray(images)
    known = TrainConfig.__dataclass_fields__
    overrides = {k: v for k, v in spec["train"].items() if k in known}
    config = TrainConfig(epochs=10, batch_size=spec["batch_size"], **overrides)
    dataset = make_dataset(images, labels, 100, config.batch_size, training=True,
                           augment=AugmentConfig()).repeat()
    start = time.perf_counter()
    model = create_model(spec["model"], num_classes=100, input_shape=images.shape[1:])
    build_s = time.perf_counter() - start
    compile_for_training(model, config, len(images) // config.batch_size)
    first_step_s = timed_fit(model, dataset, 1, 1)
    result = {"tinymoe": os.path.dirname(tinymoe.__file__), "build_s": round(build_s, 2),
              "first_step_s": round(first_step_s, 2), "train_config": overrides}
    steps = spec["steps"]
    if spec.get("profile"):
        result.update(input_pipeline(dataset, steps))
        timed_fit(model, dataset, steps, 1)  # warm-up
        logdir = tempfile.mkdtemp()
        tf.profiler.experimental.start(logdir)
        wall = timed_fit(model, dataset, steps, 1)
        tf.profiler.experimental.stop()
        result.update(read_profile(logdir), step_ms=round(1000 * wall / steps, 1))
    else:
        ends = []
        ender = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
        begin = time.perf_counter()
        timed_fit(model, dataset, steps, 1 + spec["windows"], [ender])
        windows = np.diff([begin] + ends)[1:]  # the first window warms up
        rates = steps * config.batch_size / windows
        result.update(images_per_s=round(float(np.median(rates)), 1),
                      window_images_per_s=[round(float(r), 1) for r in rates])
    print("RESULT " + json.dumps(result), flush=True)


def input_pipeline(dataset, steps):
    """Wall and CPU time per batch of the input pipeline alone (after ``steps`` batches of
    warm-up): what augmentation takes from the cores training shares them with."""
    batches = iter(dataset)
    for _ in range(steps):
        next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(batches)
    return {"input_wall_ms_per_batch": round(1000 * (time.perf_counter() - wall) / steps, 1),
            "input_cpu_ms_per_batch": round(1000 * (time.process_time() - cpu) / steps, 1)}


def read_profile(logdir):
    """Op time from the profiler's trace: by layer kind, direction, op type, and input wait."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    names = plane.event_metadata
    kinds, directions, op_types, others, backward = (collections.Counter() for _ in range(5))
    input_wait = 0.0
    for line in plane.lines:
        for event in line.events:
            name, ms = names[event.metadata_id].name, event.duration_ps / 1e9
            if line.name.startswith("tf_data_iterator_get_next") and \
                    name == "IteratorGetNextOp::DoCompute":
                input_wait += ms
            if not line.name.startswith("tf_Compute") or ":" not in name or "::" in name:
                continue
            scope, op_type = name.rsplit(":", 1)
            kind = layer_kind(scope)
            kinds[kind] += ms
            if kind == "other":
                others[scope.split("/")[-1] + ":" + op_type] += ms
            direction = ("optimizer" if "AdamW" in scope else "backward"
                         if scope.startswith("gradient_tape/") else "forward")
            directions[direction] += ms
            backward[kind] += ms if direction == "backward" else 0.0
            op_types[op_type] += ms
    total = sum(kinds.values())

    def shares(counter, top=None):
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

    return {"op_ms": round(total, 1), "input_wait_ms": round(input_wait, 1),
            "by_layer_kind_pct": shares(kinds),
            "backward_share_of_kind_pct": {k: round(100 * backward[k] / v, 1)
                                           for k, v in kinds.items() if v},
            "by_direction_pct": shares(directions),
            "by_op_type_pct": shares(op_types, 15), "other_ops_pct": shares(others, 8)}


def run_worker(spec, code_root):
    env = dict(os.environ, PYTHONPATH=code_root, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                           json.dumps(spec)], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"worker failed ({spec['model']}, {spec['size']}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def code_tree(rev, folder):
    """``tinymoe`` of git revision ``rev``, unpacked into ``folder``; returns the folder."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", repo, "archive", rev, "tinymoe"], check=True,
                             capture_output=True).stdout
    os.makedirs(folder)
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def load_train_split(path, size, folder):
    """The train split at ``size``, saved as .npy files the workers map (decoded once)."""
    from tinymoe.data import load_dataset

    images, labels = load_dataset(path, size, progress=False).split("train")
    files = {"images": f"{folder}/images_{size}.npy", "labels": f"{folder}/labels_{size}.npy"}
    np.save(files["images"], images)
    np.save(files["labels"], labels)
    return files, len(labels)


def markdown(meta, rows, args):
    lines = ["# Training throughput on cub100 (Keras fit, 2-core CPU)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s; baseline: revision {args.baseline_rev}", "",
             f"Batch {args.batch_size}, default augmentation (random crop and flip), the "
             f"{meta['data']} train split ({meta['train_images']} images). Images/s: median of "
             f"{args.windows} windows of {args.steps} steps after a warm-up window. First "
             "step: a one-step fit of a fresh model (tracing, compilation, pipeline start). "
             "Variants alternate, each in its own process.", "",
             "| model | input | variant | images/s | windows | vs baseline | first step s |",
             "|---|---|---|---|---|---|---|"]
    base = {(r["model"], r["size"]): r["images_per_s"] for r in rows
            if r["variant"] == "baseline"}
    for r in rows:
        ratio = base.get((r["model"], r["size"]))
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['variant']} | "
                     f"{r['images_per_s']} | {', '.join(map(str, r['window_images_per_s']))} | "
                     f"{r['images_per_s'] / ratio:.2f}x | {r['first_step_s']} |"
                     if ratio else f"| {r['model']} | {r['size']}x{r['size']} | "
                     f"{r['variant']} | {r['images_per_s']} | "
                     f"{', '.join(map(str, r['window_images_per_s']))} | - | "
                     f"{r['first_step_s']} |")
    return "\n".join(lines) + "\n"


def profile_markdown(meta, rows, args):
    lines = ["# Where training time goes (TensorFlow profiler, op time)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}", ""]
    for r in rows:
        lines += [f"## {r['model']}, {r['size']}x{r['size']}, {r['variant']}", "",
                  f"{args.steps} steps of batch {args.batch_size}: {r['step_ms']} ms per step "
                  f"(wall), {r['op_ms'] / args.steps:.0f} ms of op time per step (both "
                  f"cores), {r['input_wait_ms'] / args.steps:.1f} ms per step waiting for "
                  f"input. First step {r['first_step_s']} s. The input pipeline alone: "
                  f"{r['input_wall_ms_per_batch']} ms per batch (wall), "
                  f"{r['input_cpu_ms_per_batch']} ms of CPU per batch.", ""]
        lines += ["| layer kind | % of op time | of which backward % |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {r['backward_share_of_kind_pct'].get(k, 0)} |"
                  for k, v in r["by_layer_kind_pct"].items()] + [""]
        for title, key in (("direction", "by_direction_pct"), ("op type", "by_op_type_pct")):
            lines += [f"| {title} | % of op time |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in r[key].items()] + [""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--models", nargs="+",
                        default=["mobilevit_v2_050", "mobilevit_v2_moe_050"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 128])
    parser.add_argument("--variants", nargs="+", default=["baseline", "new"],
                        help="baseline, new or a git revision, each optionally +xla or -xla")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if not args.out:
        parser.error("--out is required")
    from common import run_meta, write_results

    start = time.time()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        codes = {parse_variant(v)[0] for v in args.variants}
        roots = {code: repo if code == "new" else code_tree(
            args.baseline_rev if code == "baseline" else code, f"{folder}/{code}")
            for code in codes}
        for size in args.sizes:
            files, train_images = load_train_split(args.data, size, folder)
            for model in args.models:
                for variant in args.variants:
                    code, overrides = parse_variant(variant)
                    spec = {**files, "model": model, "size": size, "steps": args.steps,
                            "windows": args.windows, "batch_size": args.batch_size,
                            "train": overrides, "profile": args.profile}
                    row = {"model": model, "size": size, "variant": variant,
                           **run_worker(spec, roots[code])}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    meta = run_meta(start, data=os.path.basename(os.path.normpath(args.data)),
                    train_images=train_images, baseline_rev=args.baseline_rev)
    text = profile_markdown(meta, rows, args) if args.profile else markdown(meta, rows, args)
    write_results(args.out, {"meta": meta, "rows": rows}, text)


if __name__ == "__main__":
    main()
