"""Batch-norm statistics for a model that has not been trained."""

from tinymoe.backend import keras


def settle_batch_norms(model, images):
    """Sets every batch norm's moving mean and variance to those of ``images``.

    An untrained model's batch norms hold their initial statistics (mean 0, variance 1),
    which shrink the activations of real images layer after layer: by the last stages the
    tokens are a few millionths, ranges no trained model has, and int8 calibration on them
    gives quantisation scales TFLite Micro cannot compute with (its SOFTMAX aborts below
    2^-26). With the statistics of real (or random) images, an untrained model converts
    and runs as a trained one would, which is what its sizes, MACs, arena and instruction
    counts need. Runs one training-mode call with momentum 0; the weights do not change.

    Args:
        model: a Keras model.
        images: a batch the model takes (e.g. 8-16 images).

    Returns:
        ``model``.

    Example:
        >>> settle_batch_norms(create_model("mobilevit_v2_mcu", 10, (128, 128, 3)), images)
    """
    norms = [layer for layer in model.submodules
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 0.0
        model(images, training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return model
