"""Choosing how the mixture-of-experts layers of a trained model run at inference."""

from tinymoe.layers.moe import MoEFeedForward, validate_dispatch


def _set_dispatch(config, settings):
    """Sets the dispatch in every MoE layer config nested anywhere in a model config."""
    if isinstance(config, dict):
        if config.get("class_name", "").endswith("MoEFeedForward"):
            config["config"].update(settings)
        moe = config.get("moe")
        if isinstance(moe, dict):  # a TransformerLayer builds its MoEFeedForward from this
            moe.update(settings)
        for value in config.values():
            _set_dispatch(value, settings)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _set_dispatch(value, settings)


def has_experts(model):
    """True when ``model`` holds at least one :class:`MoEFeedForward`.

    Example:
        >>> has_experts(create_model("mobilevit_v2_moe_050"))
        True
    """
    return any(isinstance(layer, MoEFeedForward) for layer in model._flatten_layers())


def with_dispatch(model, dispatch="sparse", capacity_factor=1.25, priority="gate",
                  train_dispatch=None):
    """A copy of ``model`` (same weights) whose MoE layers use ``dispatch`` at inference.

    Choose the dispatch for export: "sparse" runs about ``capacity_factor`` feed-forwards
    per MoE layer instead of E. Training keeps the masked form unless ``train_dispatch`` is
    "sparse" (capacity-aware fine-tuning: the model trains with the drops it will see).

    Args:
        model: a Keras model with :class:`tinymoe.layers.MoEFeedForward` layers.
        dispatch: "sparse" or "masked".
        capacity_factor: expert slots as a multiple of patches / E (sparse only).
        priority: "gate" or "order": which patches keep their slots at overflow.
        train_dispatch: None keeps each layer's training form; "masked" or "sparse" sets it.

    Returns:
        the new model; ``model`` itself is not changed.

    Example:
        >>> sparse = with_dispatch(moe_model, "sparse", capacity_factor=1.25)
        >>> tflite_bytes = to_tflite(sparse, images)
        >>> aware = with_dispatch(moe_model, "sparse", 1.25, train_dispatch="sparse")
        >>> fit(aware, train, val, TrainConfig(epochs=2, learning_rate=1e-4))
    """
    if not has_experts(model):
        raise ValueError(f"Model {model.name!r} has no mixture-of-experts layer to dispatch.")
    for layer in model._flatten_layers():
        if isinstance(layer, MoEFeedForward):
            validate_dispatch(dispatch, capacity_factor, layer.top_k, layer.num_experts)
            if train_dispatch is not None:
                validate_dispatch(train_dispatch, capacity_factor, layer.top_k,
                                  layer.num_experts)
    config = model.get_config()
    if priority not in ("gate", "order"):
        raise ValueError(f"priority must be 'gate' or 'order', got {priority!r}.")
    settings = {"dispatch": dispatch, "capacity_factor": float(capacity_factor),
                "priority": priority}
    if train_dispatch is not None:
        settings["train_dispatch"] = train_dispatch
    _set_dispatch(config, settings)
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
