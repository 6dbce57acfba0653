"""Magnitude pruning with tfmot, for every kernel in a tinymoe model."""

import numpy as np

from tinymoe.backend import keras


def _sparsity():
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras


def prune(model, target_sparsity, end_step, begin_step=0, frequency=50,
          initial_sparsity=0.0, prune_router=False):
    """A copy of ``model`` whose kernels tfmot prunes by magnitude while you ``fit`` it.

    Every kernel is pruned (convolutions, attention projections, experts, the classifier),
    each tensor to ``target_sparsity`` following tfmot's polynomial schedule from
    ``begin_step`` to ``end_step``; the router of each mixture of experts stays dense unless
    ``prune_router``. Fit with the callbacks of :func:`pruning_callbacks`, then call
    :func:`strip_pruning`. The original model is not changed.

    Args:
        model: a trained Keras model.
        target_sparsity: float in [0, 1), the share of zeros at the end.
        end_step: int, the training step at which the target is reached (e.g. 70% of the
            fine-tuning steps, so the last ones recover at full sparsity).
        begin_step, frequency, initial_sparsity: the rest of tfmot's ``PolynomialDecay``.
        prune_router: prune MoE routers too.

    Returns:
        the model with ``PruneLowMagnitude`` wrappers.

    Example:
        >>> pruned = prune(model, 0.5, end_step=700)
        >>> pruned.compile(...); pruned.fit(train, epochs=5, callbacks=pruning_callbacks())
        >>> model = strip_pruning(pruned)
    """
    if not 0.0 <= float(target_sparsity) < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}.")
    if int(end_step) <= int(begin_step):
        raise ValueError(f"end_step ({end_step}) must come after begin_step ({begin_step}).")
    sparsity = _sparsity()
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=float(initial_sparsity), final_sparsity=float(target_sparsity),
        begin_step=int(begin_step), end_step=int(end_step), frequency=int(frequency))
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())

    def wrap(layer):
        if prune_router:
            for sublayer in layer._flatten_layers():
                sublayer.prune_router = True
        if hasattr(layer, "get_prunable_weights") and not layer.get_prunable_weights():
            return layer
        if not (hasattr(layer, "get_prunable_weights") or isinstance(
                layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                        keras.layers.Dense))):
            return layer
        return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)

    return keras.models.clone_model(copy, clone_function=wrap)


def pruning_callbacks(log_dir=None):
    """The callbacks a ``fit`` of a pruned model needs: tfmot's step update (and summaries).

    Example:
        >>> pruned.fit(train, epochs=2, callbacks=pruning_callbacks())
    """
    callbacks = [_sparsity().UpdatePruningStep()]
    if log_dir:
        callbacks.append(_sparsity().PruningSummaries(log_dir=log_dir))
    return callbacks


def strip_pruning(model):
    """The plain model inside a pruned one, with every mask applied to its weights.

    Example:
        >>> model = strip_pruning(pruned)
        >>> sparsity_report(model)["sparsity"]
        0.5
    """
    sparsity = _sparsity()
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    for layer in model.layers:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            for weight, mask, _ in layer.pruning_vars:
                weight.assign(weight * mask)
    return sparsity.strip_pruning(model)


def sparsity_report(model):
    """Zeros per layer among the prunable kernels of a (pruned or stripped) model.

    Returns:
        dict: ``layers`` (name -> {"weights", "zeros", "sparsity"}) and the overall
        ``sparsity`` of all prunable kernels.

    Example:
        >>> sparsity_report(strip_pruning(pruned))["sparsity"]
        0.5
    """
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    rows, total, zeros = {}, 0, 0
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, pruning_wrapper.PruneLowMagnitude) else layer
        if hasattr(inner, "get_prunable_weights"):
            weights = inner.get_prunable_weights()
        elif isinstance(inner, keras.layers.DepthwiseConv2D):  # before Conv2D, its base
            weights = [inner.depthwise_kernel]
        elif isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
            weights = [inner.kernel]
        else:
            continue
        if not weights:
            continue
        count = sum(int(np.prod(w.shape)) for w in weights)
        nulls = sum(int(np.sum(w.numpy() == 0)) for w in weights)
        rows[inner.name] = {"weights": count, "zeros": nulls,
                            "sparsity": round(nulls / count, 4)}
        total += count
        zeros += nulls
    return {"layers": rows, "sparsity": round(zeros / total, 4) if total else 0.0}
