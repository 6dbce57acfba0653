"""The whole job as functions that read and write files: what the CLI and `make demo` run."""

import dataclasses
import os
import tempfile
import time

import numpy as np

from tinymoe.augment import make_dataset
from tinymoe.backend import keras, tf
from tinymoe.data import write_labels
from tinymoe.distribute import DISTRIBUTE, distribution_strategy, is_chief  # noqa: F401
from tinymoe.evaluation import evaluate, evaluate_tflite  # noqa: F401  (also used from here)
from tinymoe.files import atomic_path, write_json
from tinymoe.models import create_model, list_models, with_dispatch
from tinymoe.profile import profile
from tinymoe.resume import TRAIN_BACKUP, finished_epochs, resumable_callbacks
from tinymoe.teacher_views import TeacherViews, views_dataset
from tinymoe.train import TrainConfig, fit, stream_seed


# Capacity-aware fine-tuning (``train_dispatch="sparse"``) trains at this factor unless told
# otherwise: export calibrates its own afterwards; on the 128x128 flagship it lands near it
# (benchmarks/results/capacity_calibration_*.md).
CAPACITY_AWARE_FACTOR = 2.0


def load_model(path):
    """Loads a ``.keras`` file written by tinymoe (for inference or further training), a
    quantisation-aware one too (:func:`tinymoe.optimize.quantize_aware`, saved with ``save``).

    Example:
        >>> model = load_model("runs/moe/best.keras")
    """
    if not os.path.isfile(path):
        raise ValueError(f"Model file {path!r} does not exist.")
    if _holds_quantize_wrappers(path):
        from tinymoe.optimize import quantize_scope

        with quantize_scope():
            return keras.models.load_model(path, compile=False)
    return keras.models.load_model(path, compile=False)


def _holds_quantize_wrappers(path):
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"QuantizeWrapperV2"' in archive.read("config.json")
    except (zipfile.BadZipFile, KeyError):
        return False  # not a .keras archive: Keras says what it is


QAT_BACKUP = "qat_backup"  # optimize_run's per-epoch QAT checkpoint folder


def _model_to_train(model, data, weights=None):
    """A registry name (with ``weights``, pretrained), a ``.keras`` path or a model, built in
    the current strategy's scope."""
    if weights is not None and not (isinstance(model, str) and model in list_models()):
        raise ValueError(f"Pretrained weights ({weights!r}) are for registered models by "
                         f"name; {model!r} is not one (a .keras file has its own weights).")
    if isinstance(model, str):
        if model.endswith(".keras"):
            return load_model(model)
        if model in list_models():
            return create_model(model, num_classes=data.num_classes,
                                input_shape=data.images.shape[1:], weights=weights)
        raise ValueError(f"{model!r} is neither a registered model "
                         f"({', '.join(list_models())}) nor a .keras file.")
    if tf.distribute.has_strategy():  # its variables were made outside the scope: rebuild
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            model.save(path)
            return load_model(path)
    return model


def train_run(model, data, out_dir, config, augment=None, verbose=1, train_dispatch=None,
              capacity_factor=CAPACITY_AWARE_FACTOR, distribute=None, weights=None, seed=None,
              distillation=None):
    """Trains ``model`` (a registry name, a ``.keras`` path or a model) on ``data``.

    Writes ``best.keras`` (best validation accuracy), ``labels.txt``, ``log.csv`` and
    ``summary.json`` into ``out_dir`` (and ``epoch<N>.keras`` for each of
    ``config.save_epochs``). ``train_dispatch="sparse"`` trains a mixture of experts with
    the fixed capacity its sparse export will have (capacity-aware fine-tuning, see
    :func:`tinymoe.models.with_dispatch`); validation runs the masked form.

    ``distribute`` (see :func:`distribution_strategy`) trains with Keras fit on several
    replicas, the model built and compiled in the strategy's scope. ``config.batch_size``
    and ``config.learning_rate`` are per replica: the global batch is ``batch_size x
    replicas`` and the peak learning rate ``learning_rate x replicas`` (the linear scaling
    rule), so each replica sees the batch one device would. With "multi-worker" every
    worker runs this with the same arguments; only the chief (worker 0) writes ``out_dir``,
    and the others return ``(model, {"chief": False, ...})``.

    ``seed`` seeds initialisation, shuffling, augmentation and dropout (Python, NumPy and
    TensorFlow, :func:`keras.utils.set_random_seed`): two runs with one seed on one
    machine give the same model where TensorFlow's kernels are deterministic (``tinymoe
    train --seed`` also turns on ``tf.config.experimental.enable_op_determinism``). A run
    resumed at ``config.initial_epoch`` is seeded with :func:`tinymoe.train.stream_seed`
    instead (its batches, and any layer it initialises), so that it does not replay the
    stream its checkpoint already trained on.

    Every epoch is backed up into ``out_dir/train_backup`` (:mod:`tinymoe.resume`): a run
    stopped part-way and started again with the same arguments and ``out_dir`` goes on from
    its last finished epoch, and with a ``seed`` ends with the model an unbroken run gives
    (the weights, optimizer, data order, augmentation and dropout draws restored; the log
    and ``best.keras`` go on). The folder is removed when training ends.

    ``weights`` (e.g. "tinyimagenet") starts a registered model from pretrained weights
    (see :func:`tinymoe.models.create_model`); :data:`FINE_TUNE` is the recipe chosen for it.

    ``distillation`` (:class:`tinymoe.distill.Distillation`) adds a teacher's outputs on each
    augmented batch to the labels (see :func:`tinymoe.distill.load_teacher`); the summary
    records the teacher, its weight and temperature.

    Returns:
        (best model, summary dict: params, macs, val_accuracy, images_per_second, replicas,
        batch_size and learning_rate as trained, ...).

    Example:
        >>> model, summary = train_run("mobilevit_v2_050", load_dataset("digits", 32),
        ...                            "runs/dense", TrainConfig(epochs=12))
    """
    strategy = distribution_strategy(distribute)
    replicas = strategy.num_replicas_in_sync
    config = dataclasses.replace(config, batch_size=config.batch_size * replicas,
                                 learning_rate=config.learning_rate * replicas)
    data_seed = stream_seed(seed or 0, config.initial_epoch)
    if seed is not None:
        keras.utils.set_random_seed(data_seed)
        # keras-cv's RandAugment, MixUp and CutMix draw from the global generator.
        tf.random.set_global_generator(tf.random.Generator.from_seed(data_seed))
    backup_dir = os.path.join(out_dir, TRAIN_BACKUP)
    finished = finished_epochs(backup_dir, config)  # refuses a backup it cannot go on from
    x_train, y_train = data.split("train")
    x_val, y_val = data.split("val")
    steps_per_epoch = None
    if distillation is not None and isinstance(distillation.teacher, TeacherViews):
        # The stored views are the augmentation; skip those of epochs already trained
        # (before the initial epoch, or backed up by a stopped run).
        done = dataclasses.replace(config, initial_epoch=max(config.initial_epoch, finished))
        train, steps_per_epoch = _stored_views(distillation.teacher, x_train, y_train, data,
                                              done)
    else:
        train = make_dataset(x_train, y_train, data.num_classes, config.batch_size,
                             training=True, augment=augment, seed=data_seed)
    val = make_dataset(x_val, y_val, data.num_classes, 64) if len(x_val) else None
    chief = is_chief(strategy)
    with strategy.scope(), tempfile.TemporaryDirectory() as scratch:
        model = _model_to_train(model, data, weights)
        if train_dispatch is not None:
            model = with_dispatch(model, "masked", capacity_factor,
                                  train_dispatch=train_dispatch)
        start = time.time()
        # A multi-worker run's other workers train in step with the chief but write
        # nothing of their own: their checkpoints and logs go to a scratch folder (the
        # backup goes where the chief's is: Keras writes only the chief's).
        callbacks = resumable_callbacks(out_dir if chief else scratch,
                                        "val_accuracy" if val is not None else "accuracy",
                                        config, backup_dir, train)
        history = fit(model, train, val, dataclasses.replace(config, save_epochs=()),
                      verbose=verbose, callbacks=callbacks, distillation=distillation,
                      steps_per_epoch=steps_per_epoch)
        seconds = time.time() - start
    if not chief:
        return model, {"model": model.name, "chief": False, "replicas": replicas,
                       "final_train_accuracy": float(history.history["accuracy"][-1])}
    write_labels(os.path.join(out_dir, "labels.txt"), data.class_names)
    best_path = os.path.join(out_dir, "best.keras")
    best = load_model(best_path)
    trained = config.epochs - max(config.initial_epoch, finished)
    summary = {
        **profile(best),
        "model": model.name,
        "weights": weights,
        "seed": seed,
        "distillation": distillation.describe() if distillation is not None else None,
        "augment": dataclasses.asdict(augment) if augment is not None else None,
        "epochs": config.epochs,
        "initial_epoch": config.initial_epoch,
        "resumed_after_epoch": finished or None,
        "replicas": replicas,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "train_images": int(len(x_train)),
        "train_seconds": round(seconds, 1),
        "images_per_second": round(trained * len(x_train) / seconds, 1),
        "val_accuracy": evaluate(best, x_val, y_val, data.num_classes) if len(x_val) else None,
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "best": best_path,
    }
    write_json(os.path.join(out_dir, "summary.json"), summary)
    return best, summary


def _stored_views(views, x_train, y_train, data, config):
    """The training batches of stored teacher views for ``config``'s epochs (those before
    ``config.initial_epoch`` skipped), and the steps of one epoch."""
    import math

    if views.epochs < config.epochs:
        raise ValueError(f"The stored teacher views cover {views.epochs} epochs; this run "
                         f"trains to epoch {config.epochs}: draw views for as many epochs.")
    steps = math.ceil(len(x_train) / config.batch_size)
    train = views_dataset(views, x_train, y_train, data.num_classes, config.batch_size)
    return train.skip(config.initial_epoch * steps), steps


def upcycle_run(dense_path, data, out_path, moe_config, router="cluster", num_images=512,
                **upcycle_kwargs):
    """Upcycles the dense model at ``dense_path`` and writes the MoE model to ``out_path``.

    Clusters the patches of ``num_images`` training images (a seeded random sample, so that
    every class can be among them); writes ``out_path`` (``.keras``) and a JSON report
    beside it.

    Example:
        >>> moe, summary = upcycle_run("runs/dense/best.keras", data, "runs/moe_init.keras",
        ...                            MoEConfig(num_experts=4))
    """
    from tinymoe.routing import upcycle

    if not out_path.endswith(".keras"):
        raise ValueError(f"The output must be a .keras file, got {out_path!r}.")
    dense = load_model(dense_path)
    x_train, y_train = data.split("train")
    # A seeded sample of the whole split: image folders list the classes one after another,
    # so the first images would show the clustering a few classes only.
    pick = np.sort(np.random.default_rng(upcycle_kwargs.get("seed", 0)).permutation(
        len(x_train))[:num_images])
    if router == "superclass":
        upcycle_kwargs = {"labels": y_train[pick], "num_classes": data.num_classes,
                          **upcycle_kwargs}
    moe, report = upcycle(dense, moe_config, x_train[pick], router=router, **upcycle_kwargs)
    with atomic_path(out_path) as tmp:
        moe.save(tmp)
    summary = {"router": report.router, "layers": report.layers, "dense": dense_path,
               "images": int(min(num_images, len(x_train))),
               **{key: upcycle_kwargs[key] for key in ("noise", "reinit")
                  if key in upcycle_kwargs}, **profile(moe)}
    write_json(os.path.splitext(out_path)[0] + "_upcycle.json", summary)
    return moe, summary


def analyze_run(model, data, out_dir, split="val", max_images=512, num_pictures=8,
                dense_model=None):
    """Writes affinity matrices (PNG and ``.npz``), expert load and patch-grouping pictures,
    and the diagnosis of the experts (:func:`tinymoe.diagnosis.diagnose_experts`: how far they
    moved apart, and from ``dense_model``'s feed-forwards when given; top-1 with each layer's
    experts replaced by their mean).

    Returns:
        ``{"layers": {layer key: {"load": [...], "files": [...]}}, "experts": diagnosis}``,
        also written as ``analysis.json``.

    Example:
        >>> analyze_run("runs/moe/best.keras", data, "runs/analysis", dense_model="runs/dense/epoch20.keras")
    """
    from tinymoe.analysis import analyze, plot_affinity, plot_patch_groups
    from tinymoe.diagnosis import diagnose_experts

    if isinstance(model, str):
        model = load_model(model)
    if isinstance(dense_model, str):
        dense_model = load_model(dense_model)
    images, labels = data.split(split)
    if len(images) > max_images:  # a seeded sample of every class, not the first classes
        pick = np.sort(np.random.default_rng(0).permutation(len(images))[:max_images])
        images, labels = images[pick], labels[pick]
    results = analyze(model, images.astype(np.float32), labels, data.num_classes)
    if not results:
        raise ValueError(f"Model {model.name!r} has no mixture-of-experts layer to analyse.")
    # Before anything is written: a dense model that does not match stops here.
    experts = diagnose_experts(model, images.astype(np.float32), labels, dense_model)
    os.makedirs(out_dir, exist_ok=True)
    layers = {}
    for key, result in results.items():
        stem = key.replace("/", "_")
        num_experts = result["affinity"].shape[1]
        files = [
            plot_affinity(result["affinity"], data.class_names,
                          os.path.join(out_dir, f"{stem}_affinity.png"),
                          f"{key}\nshare of each class's patches per expert"),
            plot_affinity(result["paper_affinity"], data.class_names,
                          os.path.join(out_dir, f"{stem}_paper_affinity.png"),
                          f"{key}\naffinity (softmax T=0.001, < 0.05 set to 0)"),
            plot_patch_groups(images[:num_pictures], result["experts"][:num_pictures],
                              result["patch_pixels"],
                              os.path.join(out_dir, f"{stem}_patches.png"), num_experts,
                              [data.class_names[i] for i in labels[:num_pictures]]),
        ]
        arrays = os.path.join(out_dir, f"{stem}.npz")
        with atomic_path(arrays) as tmp:
            np.savez(tmp, affinity=result["affinity"], paper_affinity=result["paper_affinity"],
                     load=result["load"], experts=result["experts"])
        files.append(arrays)
        layers[key] = {"load": [round(float(v), 4) for v in result["load"]], "files": files}
    summary = {"layers": layers, "experts": experts}
    write_json(os.path.join(out_dir, "analysis.json"), summary)
    return summary


def calibrate_moe_capacity(model, calibration, x_val, x_train, progress=True):
    """:func:`tinymoe.export.calibrate_capacity` on the int8 calibration images and the
    validation images (when the data has its own; never the test split).

    Returns:
        (the sparse int8 ``.tflite`` bytes, :class:`tinymoe.export.CapacityReport`).

    Example:
        >>> tflite_bytes, capacity = calibrate_moe_capacity(model, x_train[:200], x_val,
        ...                                                 x_train)
    """
    from tinymoe.export import calibrate_capacity

    own_val = len(x_val) and x_val is not x_train
    images = np.concatenate([calibration, x_val]) if own_val else calibration
    return calibrate_capacity(model, images, calibration, progress=progress)


def optimize_run(model, data, out_dir, sparsity=0.0, prune_epochs=2, qat_epochs=2,
                 batch_size=32, learning_rate=2e-4, augment=None, prune_router=False,
                 calibration_images=200, dispatch="sparse", capacity_factor="auto", verbose=1,
                 seed=None, callbacks=(), distillation=None):
    """Prune (optional), quantisation-aware training (optional), int8 conversion, checks.

    The float model -> magnitude pruning to ``sparsity`` over ``prune_epochs`` (skipped at
    0) -> QAT for ``qat_epochs`` (prune-preserving after pruning; 0 gives post-training
    quantisation) -> full-int8 ``.tflite`` verified in TFLite Micro -> top-1 of the float
    model, the optimised Keras model and the int8 model in TFLite Micro on the validation
    split -> flash, arena and MACs (:func:`tinymoe.export.report`). A mixture of experts
    is converted with ``dispatch`` ("sparse": fixed-capacity top-1; "masked": every expert)
    at ``capacity_factor``: a number, or "auto" (each MoE layer's smallest factor at which
    the sparse int8 model agrees with the masked one on 98% of the calibration and
    validation images, :func:`tinymoe.export.calibrate_capacity`; in ``summary["capacity"]``).

    Writes into ``out_dir``: ``pruned.keras`` (if pruned), ``optimized.keras`` (the float
    model with the weights the int8 model holds), ``model.tflite``, ``labels.txt``,
    ``summary.json``. QAT backs up after every epoch into ``out_dir/qat_backup``: a run
    stopped during QAT, started again with the same arguments, goes on from the last
    finished epoch (after pruning, from ``pruned.keras``). ``callbacks`` are added to the
    QAT fit; ``distillation`` (:class:`tinymoe.distill.Distillation`) lets a teacher join
    the labels in the pruning and QAT epochs.

    Returns:
        (tflite bytes, summary dict).

    Example:
        >>> tflite_bytes, summary = optimize_run("runs/moe/best.keras", data, "runs/opt",
        ...                                      sparsity=0.5, qat_epochs=2)
    """
    from tinymoe.export import report, to_tflite
    from tinymoe.models import has_experts
    from tinymoe.optimize import (prune, pruning_callbacks, quantize_aware, sparsity_report,
                                  strip_pruning, strip_quantization)

    if seed is not None:  # as train_run's seed: the pruning, QAT data order and augmentation
        keras.utils.set_random_seed(int(seed))
    if isinstance(model, str):
        model = load_model(model)
    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train = data.split("train")
    x_val, y_val = data.split("val")
    if not len(x_val):
        x_val, y_val = x_train, y_train  # a folder without a split file or val images
    train = make_dataset(x_train, y_train, data.num_classes, batch_size, training=True,
                         augment=augment, seed=int(seed or 0))
    steps = int(train.cardinality().numpy())
    summary = {"float_top1": evaluate(model, x_val, y_val, data.num_classes),
               "sparsity_target": float(sparsity), "prune_epochs": 0, "qat_epochs": 0,
               "distillation": distillation.describe() if distillation is not None else None}
    start = time.time()
    resuming_qat = qat_epochs > 0 and any(
        files for _, _, files in os.walk(os.path.join(out_dir, QAT_BACKUP)))  # emptied at the end
    if sparsity > 0 and prune_epochs > 0 and resuming_qat and os.path.isfile(
            os.path.join(out_dir, "pruned.keras")):
        model = load_model(os.path.join(out_dir, "pruned.keras"))  # pruned before the stop
        summary.update(prune_epochs=prune_epochs, sparsity=sparsity_report(model)["sparsity"],
                       pruned_top1=evaluate(model, x_val, y_val, data.num_classes))
    elif sparsity > 0 and prune_epochs > 0:
        pruned = prune(model, sparsity, end_step=max(1, int(0.7 * prune_epochs * steps)),
                       frequency=max(1, steps // 4), prune_router=prune_router)
        config = TrainConfig(epochs=prune_epochs, batch_size=batch_size,
                             learning_rate=learning_rate, warmup_epochs=0)
        fit(pruned, train, None, config, verbose=verbose, callbacks=pruning_callbacks(),
            distillation=distillation)
        model = strip_pruning(pruned)
        with atomic_path(os.path.join(out_dir, "pruned.keras")) as tmp:
            model.save(tmp)
        summary.update(prune_epochs=prune_epochs, sparsity=sparsity_report(model)["sparsity"],
                       pruned_top1=evaluate(model, x_val, y_val, data.num_classes))
    if qat_epochs > 0:
        qat = quantize_aware(model, preserve_sparsity=sparsity > 0)
        config = TrainConfig(epochs=qat_epochs, batch_size=batch_size,
                             learning_rate=learning_rate, warmup_epochs=0)
        # Its weights, quantiser ranges, optimizer and epoch are backed up as a TensorFlow
        # checkpoint after every epoch, and a run started again with the same out_dir
        # resumes from the last finished epoch.
        backup = keras.callbacks.BackupAndRestore(os.path.join(out_dir, QAT_BACKUP))
        fit(qat, train, None, config, verbose=verbose, callbacks=[backup, *callbacks],
            distillation=distillation)
        model = strip_quantization(qat)
        summary["qat_epochs"] = qat_epochs
    with atomic_path(os.path.join(out_dir, "optimized.keras")) as tmp:
        model.save(tmp)
    summary["optimized_top1"] = evaluate(model, x_val, y_val, data.num_classes)
    summary["optimize_seconds"] = round(time.time() - start, 1)
    calibration = x_train[:calibration_images]
    if has_experts(model) and dispatch == "sparse" and capacity_factor == "auto":
        tflite_bytes, capacity = calibrate_moe_capacity(model, calibration, x_val, x_train,
                                                        progress=bool(verbose))
        summary.update(dispatch=dispatch, capacity=capacity.as_dict())
    else:
        if has_experts(model):
            model = with_dispatch(model, dispatch,
                                  1.25 if capacity_factor == "auto" else capacity_factor)
            summary["dispatch"] = dispatch
        tflite_bytes = to_tflite(model, calibration)
    with atomic_path(os.path.join(out_dir, "model.tflite")) as tmp, open(tmp, "wb") as handle:
        handle.write(tflite_bytes)
    write_labels(os.path.join(out_dir, "labels.txt"), data.class_names)
    summary["int8_tflm_top1"] = evaluate_tflite(tflite_bytes, x_val, y_val)
    measured = report(tflite_bytes)
    summary.update({key: measured[key] for key in
                    ("flash_bytes", "weight_bytes", "arena_bytes", "macs", "op_counts")})
    write_json(os.path.join(out_dir, "summary.json"), summary)
    return tflite_bytes, summary
