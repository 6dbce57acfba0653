"""The faster training formulations compute what the inference (exported) ones compute.

Layers take a cheaper path when ``training=True`` (the graph Keras fit runs) and keep the
TFLite Micro formulation otherwise; here the two are compared on random inputs, values and
gradients. Tolerance: none where only data moves (split: bit-exact values); the
attention's weight gradients may add the same terms in another order (a concatenation
instead of a sum of zero-padded slices), so they may differ by a float32 rounding or two
relative to the largest gradient: 1e-6 (about 8 * 2**-24).
"""

import numpy as np
from tinymoe.augment import random_crop_and_resize, random_flip
from tinymoe.backend import keras, tf
from tinymoe.layers.attention import SeparableSelfAttention
from tinymoe.train import TrainConfig, compile_for_training


def values_and_gradients(layer, x, training, upstream):
    """The layer's output on ``x`` and the gradients of ``sum(output * upstream)`` with
    respect to ``x`` and to each trainable weight."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in grads]


def random_tensor(shape, seed):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def test_attention_training_split_equals_the_exported_slices():
    layer = SeparableSelfAttention()
    x = random_tensor([2, 4, 16, 32], 0)
    layer.build(x.shape)
    upstream = random_tensor(x.shape, 1)
    y_train, grads_train = values_and_gradients(layer, x, True, upstream)
    y_infer, grads_infer = values_and_gradients(layer, x, False, upstream)
    np.testing.assert_array_equal(y_train, y_infer)
    for fast, reference in zip(grads_train, grads_infer):
        np.testing.assert_allclose(fast, reference, rtol=0,
                                   atol=1e-6 * float(np.abs(reference).max()))


def test_batched_crop_of_the_whole_image_is_the_identity_and_crops_stay_inside():
    images = random_tensor([4, 16, 16, 3], 0)
    whole = random_crop_and_resize(images, 16, (1.0, 1.0), aspect_ratio=(1.0, 1.0))
    np.testing.assert_allclose(whole.numpy(), images.numpy(), atol=1e-5)
    # Each pixel holds its own row and column: a crop's corners show where it was cut.
    rows, cols = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    grid = tf.constant(np.tile(np.stack([rows, cols, rows], -1)[None], [256, 1, 1, 1]),
                       tf.float32)
    crops = random_crop_and_resize(grid, 32, (0.5, 1.0)).numpy()
    height = crops[:, -1, 0, 0] - crops[:, 0, 0, 0] + 1
    width = crops[:, 0, -1, 1] - crops[:, 0, 0, 1] + 1
    area = height * width / 64.0 ** 2
    assert crops.min() >= 0.0 and crops.max() <= 63.0
    assert area.min() >= 0.5 * 0.9 and area.max() <= 1.0 + 1e-6
    assert area.max() - area.min() > 0.3  # different crops per image
    ratio = width / height
    assert ratio.min() >= 3 / 4 * 0.95 and ratio.max() <= 4 / 3 * 1.05


def test_batched_flip_flips_about_half_of_the_images():
    images = random_tensor([64, 4, 6, 3], 0)
    flipped = random_flip(images).numpy()
    same = np.all(flipped == images.numpy(), axis=(1, 2, 3))
    mirrored = np.all(flipped == images.numpy()[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 16 < mirrored.sum() < 48


def test_jit_compile_reaches_keras_compile_and_yields_to_eager_runs():
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    compile_for_training(model, TrainConfig(epochs=1, jit_compile=True), steps_per_epoch=2)
    assert model.jit_compile
    compile_for_training(model, TrainConfig(epochs=1, jit_compile=True), 2, run_eagerly=True)
    assert not model.jit_compile and model.run_eagerly
    compile_for_training(model, TrainConfig(epochs=1), steps_per_epoch=2)
    assert not model.jit_compile
