"""One test battery for every tinymoe layer: build, call, config, save/load, one fit step."""

import inspect

import numpy as np

from tinymoe.backend import keras, tf


def run_layer_test(layer_cls, init_kwargs, input_shape, tmp_path, expected_output_shape=None):
    """Checks the behaviour every tinymoe layer must have.

    - every ``__init__`` argument appears in ``get_config`` and ``from_config`` rebuilds it;
    - eager and symbolic calls give the same output shape (and ``compute_output_shape``);
    - a model holding the layer survives a ``.keras`` round trip with identical outputs;
    - one ``fit`` step runs and changes the trainable weights.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    params = inspect.signature(layer_cls.__init__).parameters
    base = inspect.signature(keras.layers.Layer.__init__).parameters
    for name in params:
        if name not in ("self", "kwargs") and name not in base:
            assert name in config, f"{layer_cls.__name__}.get_config() lacks {name!r}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *input_shape)).astype(np.float32)
    eager = layer(x, training=False)
    expected = expected_output_shape or tuple(eager.shape[1:])
    assert tuple(eager.shape) == (2, *expected)
    assert tuple(layer.compute_output_shape((2, *input_shape))[1:]) == tuple(expected)

    inputs = keras.Input(input_shape)
    outputs = layer_cls(**init_kwargs)(inputs)
    assert tuple(outputs.shape[1:]) == tuple(expected)
    model = keras.Model(inputs, outputs)
    before = model(x, training=False).numpy()
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), before, rtol=1e-5, atol=1e-5)

    if model.trainable_weights:
        start = [w.numpy().copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = rng.normal(size=(2, *expected)).astype(np.float32)
        history = model.fit(x, target, epochs=1, batch_size=2, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        changed = [not np.allclose(a, w.numpy()) for a, w in zip(start, model.trainable_weights)]
        assert any(changed), f"{layer_cls.__name__}: one fit step changed no weight"
    return tf.convert_to_tensor(eager)
