"""tf.data pipelines for Keras fit: batched crop and flip, keras-cv RandAugment, MixUp, CutMix."""

import dataclasses

from tinymoe.backend import tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, each part optional.

    Args:
        crop: random crop of ``crop_area`` of the image (and aspect ratio 3/4 to 4/3), resized
            back (keras-cv RandomCropAndResize's distribution, see
            :func:`random_crop_and_resize`).
        crop_area: (min, max) share of the image area a crop keeps.
        flip: random horizontal flip (leave off for text or digits; :func:`random_flip`).
        rand_augment: keras-cv RandAugment, ``rand_augment_ops`` operations per image at
            ``rand_augment_magnitude`` (0 to 1).
        mixup_alpha: MixUp strength (0 disables).
        cutmix_alpha: CutMix strength (0 disables); with MixUp too, each batch gets one of them.

    Example:
        >>> AugmentConfig(crop=True, flip=False, rand_augment=True, mixup_alpha=0.2)
    """

    crop: bool = True
    crop_area: tuple = (0.5, 1.0)
    flip: bool = True
    rand_augment: bool = False
    rand_augment_ops: int = 2
    rand_augment_magnitude: float = 0.3
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @classmethod
    def none(cls):
        return cls(crop=False, flip=False)


def build_augmenter(config, image_size, seed=0):
    """A function ``(images, one_hot_labels) -> (images, labels)`` applying ``config``.

    Images are float32 pixel values in [0, 255]; labels are one-hot (MixUp and CutMix mix
    them). Crop and flip are batched TensorFlow ops; keras-cv (RandAugment, MixUp, CutMix) is
    imported here, only when one of them is on.

    Example:
        >>> augment = build_augmenter(AugmentConfig(), image_size=128, seed=0)
        >>> images, labels = augment(images, one_hot_labels)
    """
    image_layers = []
    if config.crop:
        image_layers.append(lambda images: random_crop_and_resize(images, image_size,
                                                                  config.crop_area))
    if config.flip:
        image_layers.append(random_flip)
    mixers = []
    if config.rand_augment or config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        import keras_cv  # imports tensorflow-datasets too: seconds, so only when needed

        if config.rand_augment:
            rand_augment = keras_cv.layers.RandAugment(
                value_range=(0, 255), augmentations_per_image=config.rand_augment_ops,
                magnitude=config.rand_augment_magnitude, seed=seed)
            image_layers.append(lambda images: rand_augment(images, training=True))
        if config.mixup_alpha > 0:
            mixers.append(keras_cv.layers.MixUp(alpha=config.mixup_alpha, seed=seed))
        if config.cutmix_alpha > 0:
            mixers.append(keras_cv.layers.CutMix(alpha=config.cutmix_alpha, seed=seed))

    def augment(images, labels):
        for layer in image_layers:
            images = layer(images)
        if mixers:
            batch = {"images": images, "labels": labels}
            if len(mixers) == 1:
                batch = mixers[0](batch, training=True)
            else:
                choice = tf.random.uniform((), 0, len(mixers), dtype=tf.int32, seed=seed)
                batch = tf.switch_case(choice, [lambda m=m: m(batch, training=True)
                                                for m in mixers])
            images, labels = batch["images"], batch["labels"]
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return augment


def random_crop_and_resize(images, size, crop_area, aspect_ratio=(3 / 4, 4 / 3)):
    """keras-cv ``RandomCropAndResize``'s random crops, for a whole batch in one op.

    The same distribution as the keras-cv layer: per image, an area share uniform in
    ``crop_area`` and an aspect ratio uniform in ``aspect_ratio`` give the crop's height
    ``sqrt(area / ratio)`` and width ``sqrt(area * ratio)`` (clipped to the image), at an
    offset uniform over the positions where it fits, resized bilinearly to ``size``. The
    keras-cv layer crops image by image in a loop; one ``crop_and_resize`` of the batch
    costs a fraction of that.

    Args:
        images: float ``[B, H, W, C]``.
        size: int, side of the square output.
        crop_area: (min, max) share of the image area a crop keeps.
        aspect_ratio: (min, max) width/height distortion of the crop.

    Example:
        >>> random_crop_and_resize(tf.zeros([4, 64, 64, 3]), 32, (0.5, 1.0)).shape
        TensorShape([4, 32, 32, 3])
    """
    batch = tf.shape(images)[0]
    area = tf.random.uniform([batch], crop_area[0], crop_area[1])
    ratio = tf.random.uniform([batch], aspect_ratio[0], aspect_ratio[1])
    height = tf.clip_by_value(tf.sqrt(area / ratio), 0.0, 1.0)
    width = tf.clip_by_value(tf.sqrt(area * ratio), 0.0, 1.0)
    top = tf.random.uniform([batch]) * (1.0 - height)
    left = tf.random.uniform([batch]) * (1.0 - width)
    boxes = tf.stack([top, left, top + height, left + width], axis=1)  # [B, 4] relative
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), (size, size))


def random_flip(images):
    """Flips each image of a batch left-right with probability 1/2 (keras-cv ``RandomFlip
    ("horizontal")``'s distribution, as one select).

    Example:
        >>> random_flip(tf.zeros([4, 8, 8, 3])).shape
        TensorShape([4, 8, 8, 3])
    """
    flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def make_dataset(images, labels, num_classes, batch_size=32, training=False, augment=None,
                 seed=0):
    """Batches images and labels for Keras fit, with one-hot labels.

    Args:
        images: uint8 or float ``[N, H, W, 3]`` pixel values in [0, 255].
        labels: int ``[N]`` class indices.
        num_classes: int, width of the one-hot labels.
        batch_size: int.
        training: shuffle (seeded, again each epoch) and augment.
        augment: an :class:`AugmentConfig`, or None for no augmentation.
        seed: shuffle and augmentation seed.

    Returns:
        ``tf.data.Dataset`` of ``(float32 images, float32 one-hot labels)``, cached and
        prefetched.

    Example:
        >>> train = make_dataset(x_train, y_train, 10, training=True, augment=AugmentConfig())
        >>> model.fit(train, epochs=5)
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if len(images) == 0:
        raise ValueError("No images to make a dataset from.")
    from tinymoe.data import warn_if_normalised

    warn_if_normalised(images, "make_dataset")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32),
                                        tf.one_hot(tf.cast(y, tf.int32), num_classes)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")  # keras-cv's "Using a while_loop for converting ..." notes
        try:
            dataset = dataset.map(build_augmenter(augment, int(images.shape[1]), seed),
                                  num_parallel_calls=tf.data.AUTOTUNE)
        finally:
            logger.setLevel(level)
    return dataset.prefetch(tf.data.AUTOTUNE)
