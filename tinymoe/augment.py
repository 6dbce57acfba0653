"""tf.data pipelines with keras-cv augmentation, for Keras fit."""

import dataclasses

from tinymoe.backend import tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, each part optional.

    Args:
        crop: random crop of ``crop_area`` of the image (and aspect ratio 3/4 to 4/3), resized
            back (keras-cv RandomCropAndResize).
        crop_area: (min, max) share of the image area a crop keeps.
        flip: random horizontal flip (leave off for text or digits).
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
    them). keras-cv is imported here, on first use.

    Example:
        >>> augment = build_augmenter(AugmentConfig(), image_size=128, seed=0)
        >>> images, labels = augment(images, one_hot_labels)
    """
    import keras_cv

    image_layers = []
    if config.crop:
        image_layers.append(keras_cv.layers.RandomCropAndResize(
            target_size=(image_size, image_size), crop_area_factor=tuple(config.crop_area),
            aspect_ratio_factor=(3 / 4, 4 / 3), seed=seed))
    if config.flip:
        image_layers.append(keras_cv.layers.RandomFlip("horizontal", seed=seed))
    if config.rand_augment:
        image_layers.append(keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=config.rand_augment_ops,
            magnitude=config.rand_augment_magnitude, seed=seed))
    mixers = []
    if config.mixup_alpha > 0:
        mixers.append(keras_cv.layers.MixUp(alpha=config.mixup_alpha, seed=seed))
    if config.cutmix_alpha > 0:
        mixers.append(keras_cv.layers.CutMix(alpha=config.cutmix_alpha, seed=seed))

    def augment(images, labels):
        for layer in image_layers:
            images = layer(images, training=True)
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
