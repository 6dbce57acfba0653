"""A teacher's outputs stored once per augmented view (TinyViT's way, arXiv 2207.10666).

A large teacher on a CPU costs more than the student it teaches: the iNaturalist bird
MobileNetV2 (300 M MACs at 224x224) runs at about 60 images/s here, slower than
``mobilevit_v2_mcu`` trains at 128x128. Run online, it is paid again by every student. Here
every view a schedule will show (the epoch's order, each image's random crop and flip, a
MixUp partner and weight) is drawn once from a seed, the teacher's logits on each view are
computed once, and any number of students then train on exactly those views with the stored
logits, at the cost of training without a teacher.

The views follow :class:`tinymoe.augment.AugmentConfig`'s crop and flip distributions
(:func:`tinymoe.augment.random_crop_and_resize`), so a student trained on them sees what it
would see online. The teacher is given the student's view resized to its own input, as
online; a student of another input size trains on the same crops of its own images (the
teacher's logits are those of the size the views were computed at: ``meta["image_size"]``).

Example:
    >>> views = draw_views(len(x_train), epochs=30, seed=0, mixup_alpha=0.2)
    >>> views = compute_teacher_logits(teacher, x_train, views)
    >>> save_views(views, "runs/bird_views.npz")
    >>> train_run("mobilevit_v2_mcu", data, "runs/mcu", TrainConfig(epochs=30),
    ...           distillation=Distillation(load_views("runs/bird_views.npz")))
"""

import dataclasses
import json

import numpy as np

from tinymoe.backend import tf


@dataclasses.dataclass
class TeacherViews:
    """The views of a schedule and the teacher's logits on each.

    Attributes:
        order: int32 ``[E, N]``: view ``(e, k)`` shows training image ``order[e, k]``.
        boxes: float32 ``[E, N, 4]``: its crop (top, left, bottom, right; relative).
        flips: bool ``[E, N]``: flipped left-right.
        partners: int32 ``[E, N]``: the position in the same epoch of its MixUp partner.
        lambdas: float32 ``[E, N]``: the view's weight against its partner (1: no MixUp).
        logits: float16 ``[E, N, C]`` teacher logits, or None before they are computed.
        meta: what the views were drawn and computed with.

    Example:
        >>> views = draw_views(len(x_train), epochs=30, seed=0, mixup_alpha=0.2)
        >>> views.order.shape
        (30, 5994)
    """

    order: np.ndarray
    boxes: np.ndarray
    flips: np.ndarray
    partners: np.ndarray
    lambdas: np.ndarray
    logits: np.ndarray = None
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def epochs(self):
        return int(self.order.shape[0])

    @property
    def num_images(self):
        return int(self.order.shape[1])

    def describe(self):
        """What a summary records of the teacher: as :meth:`tinymoe.distill.Teacher.describe`."""
        return {"teacher": self.meta.get("teacher", "stored views"),
                "teacher_views": {key: self.meta.get(key) for key in (
                    "epochs", "seed", "mixup_alpha", "crop_area", "image_size",
                    "teacher_input_size")},
                **{key: value for key, value in self.meta.items()
                   if key.startswith("teacher_head")}}


def draw_views(num_images, epochs, seed=0, crop_area=(0.5, 1.0), aspect_ratio=(3 / 4, 4 / 3),
               flip=True, mixup_alpha=0.0):
    """Draws every view of an ``epochs``-long schedule over ``num_images`` images.

    Example:
        >>> views = draw_views(3539, epochs=30, seed=0)
        >>> views.boxes.shape
        (30, 3539, 4)
    """
    rng = np.random.default_rng(seed)
    shape = (int(epochs), int(num_images))
    order = np.stack([rng.permutation(num_images) for _ in range(epochs)]).astype(np.int32)
    area = rng.uniform(crop_area[0], crop_area[1], shape)
    ratio = rng.uniform(aspect_ratio[0], aspect_ratio[1], shape)
    height = np.clip(np.sqrt(area / ratio), 0.0, 1.0)
    width = np.clip(np.sqrt(area * ratio), 0.0, 1.0)
    top = rng.uniform(size=shape) * (1.0 - height)
    left = rng.uniform(size=shape) * (1.0 - width)
    boxes = np.stack([top, left, top + height, left + width], -1).astype(np.float32)
    flips = (rng.uniform(size=shape) < 0.5) if flip else np.zeros(shape, bool)
    partners = np.stack([rng.permutation(num_images) for _ in range(epochs)]).astype(np.int32)
    lambdas = (rng.beta(mixup_alpha, mixup_alpha, shape) if mixup_alpha > 0
               else np.ones(shape)).astype(np.float32)
    meta = {"epochs": int(epochs), "seed": int(seed), "crop_area": list(crop_area),
            "mixup_alpha": float(mixup_alpha), "num_images": int(num_images)}
    return TeacherViews(order, boxes, flips, partners, lambdas, meta=meta)


def render(images, views, epoch, positions, size):
    """The views at ``positions`` of ``epoch``: float32 ``[B, size, size, 3]`` images and the
    (image, partner image, weight) triple their labels mix.

    ``images`` is a tensor (or array) of the whole training split.

    Example:
        >>> crops, index, partner, weight = render(x_train, views, 0, [0, 1, 2], 128)
    """
    epoch = tf.cast(epoch, tf.int32)
    positions = tf.cast(positions, tf.int32)

    def one_view(position_list):
        index = tf.gather(tf.gather(views_t["order"], epoch), position_list)
        boxes = tf.gather(tf.gather(views_t["boxes"], epoch), position_list)
        flips = tf.gather(tf.gather(views_t["flips"], epoch), position_list)
        crops = tf.image.crop_and_resize(tf.cast(tf.gather(images, index), tf.float32), boxes,
                                         tf.range(tf.shape(index)[0]), (size, size))
        flips = tf.reshape(flips, [-1, 1, 1, 1])
        return tf.where(flips, tf.reverse(crops, axis=[2]), crops), index

    views_t = views if isinstance(views, dict) else _as_tensors(views)
    first, index = one_view(positions)
    partner_positions = tf.gather(tf.gather(views_t["partners"], epoch), positions)
    weight = tf.gather(tf.gather(views_t["lambdas"], epoch), positions)
    second, partner = one_view(partner_positions)
    mixed = (tf.reshape(weight, [-1, 1, 1, 1]) * first
             + tf.reshape(1.0 - weight, [-1, 1, 1, 1]) * second)
    return tf.clip_by_value(mixed, 0.0, 255.0), index, partner, weight


def _as_tensors(views):
    """The index arrays of ``views`` as constant tensors (once, for a dataset's map)."""
    return {"order": tf.constant(views.order), "boxes": tf.constant(views.boxes),
            "flips": tf.constant(views.flips), "partners": tf.constant(views.partners),
            "lambdas": tf.constant(views.lambdas)}


def compute_teacher_logits(teacher, images, views, batch_size=64, progress=True):
    """``views`` with ``teacher``'s logits on every view (rendered at the images' size, then
    resized to the teacher's input by the teacher, as online).

    Example:
        >>> views = compute_teacher_logits(teacher, x_train, draw_views(len(x_train), 30))
    """
    from tqdm.auto import tqdm

    if len(images) != views.num_images:
        raise ValueError(f"The views were drawn for {views.num_images} images, not "
                         f"{len(images)}.")
    size = int(images.shape[1])
    source = tf.constant(images)
    tensors = _as_tensors(views)
    logits = np.zeros((views.epochs, views.num_images, teacher.num_classes), np.float16)
    steps = [(e, s) for e in range(views.epochs) for s in range(0, views.num_images, batch_size)]
    for epoch, start in tqdm(steps, desc="teacher on the stored views", unit="batch",
                             disable=not progress, mininterval=10):
        positions = np.arange(start, min(start + batch_size, views.num_images))
        batch, _, _, _ = render(source, tensors, epoch, positions, size)
        logits[epoch, positions] = teacher.logits(batch).numpy().astype(np.float16)
    meta = {**views.meta, **teacher.describe(), "image_size": size}
    return dataclasses.replace(views, logits=logits, meta=meta)


def views_dataset(views, images, labels, num_classes, batch_size):
    """``((images, teacher logits), one-hot labels)`` batches over every epoch of ``views``,
    in order (a ``fit`` with ``steps_per_epoch = ceil(N / batch_size)`` takes epoch ``e``'s
    batches in epoch ``e``); the labels mixed as the images are.

    Example:
        >>> train = views_dataset(views, x_train, y_train, 100, batch_size=64)
        >>> fit(model, train, val, config, steps_per_epoch=math.ceil(len(x_train) / 64))
    """
    if views.logits is None:
        raise ValueError("These views have no teacher logits: compute_teacher_logits first.")
    if len(images) != views.num_images:
        raise ValueError(f"The views were drawn for {views.num_images} training images, but "
                         f"the data has {len(images)}: draw views for this data.")
    size = int(images.shape[1])
    source = tf.constant(images)
    one_hot = tf.one_hot(tf.constant(labels, tf.int32), num_classes)
    stored = tf.constant(views.logits.astype(np.float32))
    tensors = _as_tensors(views)
    batches = [(e, s) for e in range(views.epochs) for s in range(0, views.num_images, batch_size)]
    epochs = tf.constant([e for e, _ in batches], tf.int32)
    starts = tf.constant([s for _, s in batches], tf.int32)

    def batch(epoch, start):
        positions = tf.range(start, tf.minimum(start + batch_size, views.num_images))
        x, index, partner, weight = render(source, tensors, epoch, positions, size)
        weight = weight[:, None]
        y = weight * tf.gather(one_hot, index) + (1.0 - weight) * tf.gather(one_hot, partner)
        teacher = tf.gather(tf.gather(stored, epoch), positions)
        return (x, teacher), y

    return tf.data.Dataset.from_tensor_slices((epochs, starts)).map(
        batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def save_views(views, path):
    """Writes ``views`` to an ``.npz`` file, atomically.

    Example:
        >>> save_views(compute_teacher_logits(teacher, x_train, views), "views_bird.npz")
    """
    from tinymoe.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, order=views.order, boxes=views.boxes, flips=views.flips,
                 partners=views.partners, lambdas=views.lambdas,
                 logits=views.logits if views.logits is not None else np.zeros(0),
                 meta=np.array(json.dumps(views.meta)))


def load_views(path):
    """Reads views written by :func:`save_views`.

    Example:
        >>> views = load_views("views_bird.npz")
        >>> views.epochs, views.num_images
        (30, 5994)
    """
    with np.load(path) as stored:
        logits = stored["logits"]
        return TeacherViews(stored["order"], stored["boxes"], stored["flips"],
                            stored["partners"], stored["lambdas"],
                            logits if logits.size else None,
                            json.loads(str(stored["meta"])))
