"""The training recipe on Keras fit: AdamW, cosine decay with warm-up, label smoothing."""

import dataclasses
import os
import types

from tinymoe.backend import keras, tf


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One recipe for every model.

    Args:
        epochs: passes over the training set.
        batch_size: images per step.
        learning_rate: peak learning rate, reached after the warm-up.
        warmup_epochs: linear warm-up from 0, in epochs (fractions allowed).
        min_learning_rate_ratio: the cosine ends at this share of the peak.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
        label_smoothing: label smoothing of the cross-entropy.
        initial_epoch: resume the schedule of ``epochs`` epochs here: training runs epochs
            ``initial_epoch`` to ``epochs`` and the learning rate follows the cosine from
            where it stood, re-warmed over ``resume_warmup_epochs`` for the fresh
            optimizer state.
            For a model upcycled from the checkpoint of a dense run at that epoch, so that
            dense and MoE models see the same number of epochs on one schedule.
        resume_warmup_epochs: with ``initial_epoch``, the linear re-warm-up, in epochs.
        save_epochs: also write ``epoch<N>.keras`` at the end of these epochs (e.g. the
            checkpoint to upcycle from).
        jit_compile: compile the training step with XLA (the same math; float rounding
            differs). Off by default: on a 2-core CPU, XLA trained mobilevit_v2_050 at
            128x128 7x slower than TensorFlow's oneDNN kernels (20 against 142 img/s,
            benchmarks/results/train_throughput_xla_128px.md); for accelerators. Ignored
            when the model runs eagerly.

    Example:
        >>> fit(model, train, val, TrainConfig(epochs=30, learning_rate=2e-3), "runs/x")
        >>> # dense to epoch 30 (saving epoch 20), then the upcycled MoE from epoch 20 to 30:
        >>> TrainConfig(epochs=30, save_epochs=(20,))
        >>> TrainConfig(epochs=30, initial_epoch=20)
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_epochs: float = 2.0
    min_learning_rate_ratio: float = 0.01
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    initial_epoch: int = 0
    resume_warmup_epochs: float = 0.5
    save_epochs: tuple = ()
    jit_compile: bool = False

    def __post_init__(self):
        if not 0 <= self.initial_epoch < self.epochs:
            raise ValueError(f"initial_epoch must lie in [0, epochs={self.epochs}), "
                             f"got {self.initial_epoch}.")
        bad = [e for e in self.save_epochs if not self.initial_epoch < e <= self.epochs]
        if bad:
            raise ValueError(f"save_epochs {bad} lie outside the epochs this run trains "
                             f"({self.initial_epoch + 1} to {self.epochs}).")


# The fine-tuning recipe for a model started from pretrained weights (``create_model(...,
# weights="tinyimagenet")``, ``tinymoe train --weights``): the default of ``tinymoe train``
# when weights are given. Chosen on cub100's validation split (mobilevit_v2_mcu, 30 epochs,
# seed 0; benchmarks/results/finetune_mcu_lr*.md): peak 2e-3 after 2 warm-up epochs, the
# whole network trained from the first step, gave val top-1 0.769 against 0.756 at 1e-3
# after 1 epoch: the from-scratch recipe's rate suits the pretrained backbone too.
FINE_TUNE = TrainConfig(learning_rate=2e-3, warmup_epochs=2.0, label_smoothing=0.1)


# The fine-tuning recipe for Keras Applications' CNNs from their ImageNet weights
# (``create_model("mobilenet_v2_035", weights="imagenet")``): a lower peak than FINE_TUNE, one
# warm-up epoch and a light weight decay, as the peer's recipe in ../shared/docs/TEACHERS.md
# (AdamW 5e-4, one warm-up epoch, cosine, weight decay 0.01), without its head-only epochs.
IMAGENET_FINE_TUNE = TrainConfig(learning_rate=5e-4, warmup_epochs=1.0, weight_decay=0.01,
                                 label_smoothing=0.1)


def recipe_for(model, weights=None):
    """The default recipe of ``tinymoe train``: :data:`IMAGENET_FINE_TUNE` for ImageNet
    weights, :data:`FINE_TUNE` for other pretrained weights, else ``TrainConfig()``.

    Example:
        >>> recipe_for("mobilenet_v2_035", "imagenet").learning_rate
        0.0005
    """
    if weights == "imagenet":
        return IMAGENET_FINE_TUNE
    return FINE_TUNE if weights is not None else TrainConfig()


def stream_seed(seed, initial_epoch=0):
    """The seed of a run's data stream: its shuffle order and augmentation draws.

    A run that resumes a checkpoint at ``initial_epoch`` > 0 (an upcycled MoE continuing
    the dense schedule) would otherwise replay, as its epochs N+1, N+2, ..., the very
    batches (order, crops, flips) of the epochs 1, 2, ... its checkpoint trained on: its
    first epochs' train accuracy is inflated on batches the checkpoint has just seen, and
    it differs from the dense run it continues in data order as well as in architecture.
    Offsetting the seed by the epoch gives it batches of its own; a run from epoch 0 keeps
    ``seed``.

    Example:
        >>> stream_seed(0), stream_seed(0, initial_epoch=20)
        (0, 20180)
    """
    return int(seed) + 1009 * int(initial_epoch)


@keras.saving.register_keras_serializable(package="tinymoe")
class ResumedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` from step ``offset`` on, ramped linearly from 0 over ``warmup`` steps.

    Example:
        >>> ResumedSchedule(learning_rate_schedule(TrainConfig(epochs=30), 100), 2000, 50)
    """

    def __init__(self, schedule, offset, warmup=0):
        super().__init__()
        self.schedule, self.offset, self.warmup = schedule, int(offset), int(warmup)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = self.schedule(step + self.offset)
        if self.warmup:
            rate = rate * tf.minimum(1.0, step / self.warmup)
        return rate

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "offset": self.offset, "warmup": self.warmup}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def learning_rate_schedule(config, steps_per_epoch):
    """Linear warm-up to ``config.learning_rate``, then cosine decay over the remaining steps.

    With ``config.initial_epoch`` > 0, the same schedule from that epoch on (step 0 of the
    returned schedule is the first step of epoch ``initial_epoch``), re-warmed from 0 over
    ``resume_warmup_epochs``.

    Example:
        >>> schedule = learning_rate_schedule(TrainConfig(epochs=10), steps_per_epoch=100)
        >>> float(schedule(0))
        0.0
    """
    if config.initial_epoch:
        full = learning_rate_schedule(
            dataclasses.replace(config, initial_epoch=0, save_epochs=()), steps_per_epoch)
        return ResumedSchedule(full, config.initial_epoch * steps_per_epoch,
                               round(config.resume_warmup_epochs * steps_per_epoch))
    total = max(1, int(config.epochs * steps_per_epoch))
    warmup = min(total - 1, int(round(config.warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(1, total - warmup), alpha=config.min_learning_rate_ratio,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def compile_for_training(model, config, steps_per_epoch, run_eagerly=False, distillation=None):
    """Compiles ``model`` with the recipe: AdamW, the schedule, smoothed cross-entropy.

    Labels are one-hot (as :func:`tinymoe.augment.make_dataset` yields them); the model
    returns logits. A mixture of experts adds its load-balancing loss itself; per-image
    routers with super-classes get their loss from :func:`supervise_routers`; with a
    ``distillation`` (:class:`tinymoe.distill.Distillation`), a teacher's outputs on each
    augmented batch join the labels (:func:`install_train_step`).

    Example:
        >>> compile_for_training(model, TrainConfig(), steps_per_epoch=111)
        >>> model.fit(train, epochs=30)
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(config, steps_per_epoch),
        weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "norm"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        run_eagerly=run_eagerly, jit_compile=bool(config.jit_compile) and not run_eagerly)
    install_train_step(model, distillation)
    return model


def supervise_routers(model):
    """Makes ``model.fit`` train each per-image router that has super-classes to predict the
    super-class of the image's label: the loss gains ``superclass_loss_weight`` times the
    router's cross-entropy against it, and the logs a ``router_loss`` (the mean over those
    layers). Installs a training step on this model object (nothing is saved with it);
    without such a router it does nothing. Call it after ``compile``.

    Returns:
        the supervised layers (a list, empty if none).

    Example:
        >>> model.compile(...)
        >>> supervise_routers(model)
        >>> model.fit(train)  # logs loss, accuracy and router_loss
    """
    return install_train_step(model)


def _supervised_routers(model):
    from tinymoe.models import moe_layers

    return [layer for layer in moe_layers(model).values()
            if layer.superclasses is not None and layer.superclass_loss_weight > 0]


def install_train_step(model, distillation=None):
    """Installs, on this model object (nothing is saved with it), the training step that adds
    to Keras' loss what the compiled loss cannot see: the super-class loss of per-image
    routers (see :func:`supervise_routers`) and, with a ``distillation``, the teacher's term.

    With a teacher, the step's loss is ``(1 - alpha) x`` the compiled loss on the labels +
    ``alpha x`` :meth:`tinymoe.distill.Distillation.loss` on the same augmented images (the
    teacher is frozen and sees exactly the student's input) + the model's own losses, and
    the logs gain ``distill_loss``. A teacher stored as
    :class:`tinymoe.teacher_views.TeacherViews` comes with its logits in the batches
    (``((images, teacher logits), labels)``, :func:`tinymoe.teacher_views.views_dataset`).
    Without either, the model keeps Keras' own step.

    Returns:
        the supervised router layers (a list, empty if none).

    Example:
        >>> model.compile(...)
        >>> install_train_step(model, Distillation(teacher, alpha=0.5))
    """
    from tinymoe.teacher_views import TeacherViews

    layers = _supervised_routers(model)
    if not layers and distillation is None:
        return []
    stored = distillation is not None and isinstance(distillation.teacher, TeacherViews)
    tables = [tf.constant(layer.superclasses, tf.int32) for layer in layers]
    trackers = {}
    if layers:
        trackers["router_loss"] = keras.metrics.Mean(name="router_loss")
    if distillation is not None:
        trackers["distill_loss"] = keras.metrics.Mean(name="distill_loss")
        alpha = float(distillation.alpha)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        values = {}
        if stored:  # the teacher's logits on these views come with them
            x, teacher_logits = x
        elif distillation is not None:
            teacher_logits = tf.stop_gradient(distillation.teacher.logits(x))
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            if distillation is None:
                loss = self.compute_loss(x, y, y_pred, sample_weight)
            else:  # the labels' share, the teacher's share, then the model's own losses
                loss = (1.0 - alpha) * self.compiled_loss(y, y_pred, sample_weight,
                                                          regularization_losses=[])
                values["distill_loss"] = tf.reduce_mean(
                    distillation.loss(teacher_logits, y_pred))
                loss += alpha * values["distill_loss"] / tf.cast(replicas, tf.float32)
                if self.losses:  # scaled per replica as Keras scales them
                    loss += tf.add_n(self.losses) / tf.cast(replicas, tf.float32)
            if layers:
                label = tf.argmax(y, axis=-1, output_type=tf.int32)  # one-hot (or mixed)
                router_losses = [tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                    tf.gather(table, label), layer.last_router_probs))
                    for layer, table in zip(layers, tables)]
                loss += tf.add_n([layer.superclass_loss_weight * value
                                  for layer, value in zip(layers, router_losses)])
                values["router_loss"] = tf.add_n(router_losses) / len(layers)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        for key, value in values.items():
            trackers[key].update_state(value)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        return {**logs, **{key: tracker.result() for key, tracker in trackers.items()}}

    def reset_metrics(self):
        type(self).reset_metrics(self)
        for tracker in trackers.values():
            tracker.reset_state()

    model.train_step = types.MethodType(train_step, model)
    model.reset_metrics = types.MethodType(reset_metrics, model)
    model.train_function = None  # rebuilt with the new step
    return layers


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the model as ``<out_dir>/epoch<N>.keras`` at the end of each epoch N in ``epochs``.

    Epochs count from 1 as Keras prints them. Written atomically.

    Example:
        >>> model.fit(train, epochs=30, callbacks=[EpochCheckpoint("runs/dense", (20,))])
    """

    def __init__(self, out_dir, epochs):
        super().__init__()
        self.out_dir, self.epochs = out_dir, set(int(e) for e in epochs)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            from tinymoe.files import atomic_path

            with atomic_path(os.path.join(self.out_dir, f"epoch{epoch + 1}.keras")) as tmp:
                self.model.save(tmp)


def training_callbacks(out_dir, monitor="val_accuracy", save_epochs=()):
    """Callbacks for any ``model.fit``: best checkpoint (``best.keras``) and a CSV log.

    Args:
        out_dir: folder for ``best.keras`` and ``log.csv`` (created if missing).
        monitor: the metric that decides which epoch is best (maximised).
        save_epochs: also save ``epoch<N>.keras`` after these epochs (see
            :class:`EpochCheckpoint`).

    Example:
        >>> model.fit(train, validation_data=val, epochs=10,
        ...           callbacks=training_callbacks("runs/dense"))
    """
    os.makedirs(out_dir, exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "best.keras"), monitor=monitor,
                                        mode="max", save_best_only=True, verbose=0),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "log.csv")),
    ]
    if save_epochs:
        callbacks.append(EpochCheckpoint(out_dir, save_epochs))
    return callbacks


def fit(model, train_data, val_data, config, out_dir=None, verbose=1, run_eagerly=False,
        callbacks=(), distillation=None, steps_per_epoch=None):
    """Compiles ``model`` with the recipe and trains it with Keras fit.

    Args:
        model: a Keras model returning logits.
        train_data: a batched ``tf.data.Dataset`` of (images, one-hot labels).
        val_data: the same for validation, or None.
        config: a :class:`TrainConfig`.
        out_dir: folder for the best checkpoint and the CSV log; None saves nothing.
        verbose: Keras progress bars (1), one line per epoch (2) or silence (0).
        run_eagerly: skip graph tracing (faster for one or two tiny steps, slower after).
        callbacks: more Keras callbacks (e.g. :func:`tinymoe.optimize.pruning_callbacks`).
        distillation: a :class:`tinymoe.distill.Distillation`: a teacher joins the labels.
        steps_per_epoch: batches per epoch when ``train_data`` holds several epochs (stored
            teacher views); by default its length.

    Returns:
        the Keras ``History``.

    Example:
        >>> history = fit(model, train, val, TrainConfig(epochs=10), out_dir="runs/dense")
    """
    steps = steps_per_epoch or train_data.cardinality().numpy()
    if steps <= 0:
        raise ValueError("The training dataset is empty or of unknown length.")
    compile_for_training(model, config, int(steps), run_eagerly, distillation)
    callbacks = list(callbacks)
    if out_dir is not None:
        monitor = "val_accuracy" if val_data is not None else "accuracy"
        callbacks += training_callbacks(out_dir, monitor, config.save_epochs)
    elif config.save_epochs:
        raise ValueError("save_epochs needs an out_dir to write the checkpoints into.")
    return model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                     initial_epoch=config.initial_epoch, callbacks=callbacks, verbose=verbose,
                     steps_per_epoch=steps_per_epoch)

