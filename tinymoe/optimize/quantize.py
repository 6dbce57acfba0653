"""Quantisation-aware training with tfmot, for every layer of a tinymoe model.

tfmot's default registry knows Conv2D, Dense and a few more; our layers are composites
(a MobileViTv2 block holds convolutions, attention, norms and experts), so each gets a
:class:`LayerQuantizeConfig` that fake-quantises every kernel inside it the way the TFLite
converter will quantise it (8 bit, symmetric, per output channel). Every tensor the int8
model quantises inside our layers (layer-norm statistics, attention, swish, router, experts,
residual sums; see :mod:`tinymoe.layers.int8`) is fake-quantised by the layer itself; the
output of a Keras layer (rescaling, pooling, classifier) by tfmot (8 bit, asymmetric,
moving-average range).
"""

import contextlib
import math

from tinymoe.backend import keras, tf
from tinymoe.layers.building import KERNEL_CHANNEL_AXES, kernel_slots
from tinymoe.layers.int8 import Int8Points, enable_int8_simulation, int8_range_variables


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _quantizer_base():
    return _tfmot().quantization.keras.quantizers.Quantizer


def _tfmot_module(name):
    import importlib

    return importlib.import_module(
        f"tensorflow_model_optimization.python.core.quantization.keras.{name}")


class ChannelQuantizer(_quantizer_base()):
    """8-bit symmetric per-channel fake quantisation over any set of channel axes.

    TFLite quantises a filter per output channel; a weight such as an expert kernel
    ``[E, d, h]`` feeds a convolution whose output channels are its ``(E, h)`` pairs, so its
    channels span two axes. The weight is laid out as ``[rows, channels]`` and passed to
    tfmot's ``LastValueQuantizer`` (per axis, symmetric, narrow range: the converter's
    scheme), then put back.

    Args:
        channel_axes: tuple of int, the axes that index channels.
        preserve_sparsity: keep the weight's zeros at zero (prune-preserving QAT): a mask of
            its non-zero entries, set by :func:`quantize_aware`, multiplies it first.

    Example:
        >>> quantizer = ChannelQuantizer((0, 2))
    """

    def __init__(self, channel_axes=(-1,), preserve_sparsity=False):
        self.channel_axes = tuple(int(axis) for axis in channel_axes)
        self.preserve_sparsity = bool(preserve_sparsity)
        self._inner = _tfmot().quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def _layout(self, shape):
        rank = len(shape)
        channels = sorted(axis % rank for axis in self.channel_axes)
        rows = [axis for axis in range(rank) if axis not in channels]
        return rows + channels, math.prod(int(shape[axis]) for axis in channels)

    def build(self, tensor_shape, name, layer):
        _, channels = self._layout(tensor_shape)
        weights = dict(self._inner.build(tf.TensorShape([None, channels]), name, layer))
        if self.preserve_sparsity:
            weights["sparsity_mask"] = layer.add_weight(
                f"{name}_sparsity_mask", shape=tensor_shape, initializer="ones",
                trainable=False)
        return weights

    def __call__(self, inputs, training, weights, **kwargs):
        if self.preserve_sparsity:
            inputs = inputs * weights["sparsity_mask"]
        perm, channels = self._layout(inputs.shape)
        moved = tf.transpose(inputs, perm)
        ranges = {key: value for key, value in weights.items() if key != "sparsity_mask"}
        quantized = self._inner(tf.reshape(moved, [-1, channels]), training, weights=ranges)
        inverse = [perm.index(axis) for axis in range(len(perm))]
        return tf.transpose(tf.reshape(quantized, tf.shape(moved)), inverse)

    def get_config(self):
        return {"channel_axes": self.channel_axes, "preserve_sparsity": self.preserve_sparsity}

    def __eq__(self, other):
        return isinstance(other, ChannelQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


class LayerQuantizeConfig(_tfmot().quantization.keras.QuantizeConfig):
    """tfmot QuantizeConfig for any tinymoe layer (and Keras layers without one of their own).

    Every kernel found in the layer and its sublayers (see
    :data:`tinymoe.layers.building.KERNEL_CHANNEL_AXES`) is fake-quantised per channel
    and handed back to its owner during the call; the layer's output is fake-quantised
    with a moving-average range. Biases and normalisation parameters stay float, as in
    tfmot's own configs (the converter folds them or keeps them at 32 bit).

    Args:
        preserve_sparsity: keep pruned zeros at zero during QAT.
        quantize_output: fake-quantise the layer's output.

    Example:
        >>> quantize_annotate_layer(layer, LayerQuantizeConfig(preserve_sparsity=True))
    """

    def __init__(self, preserve_sparsity=False, quantize_output=True):
        self.preserve_sparsity = bool(preserve_sparsity)
        self.quantize_output = bool(quantize_output)
        self._slots = []

    def get_weights_and_quantizers(self, layer):
        slots = kernel_slots(layer)
        self._slots = [(owner, attribute) for owner, attribute, _ in slots]
        return [(variable, ChannelQuantizer(KERNEL_CHANNEL_AXES[attribute],
                                            self.preserve_sparsity))
                for _, attribute, variable in slots]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self._slots):
            raise ValueError(f"{layer.name}: {len(quantize_weights)} quantised weights for "
                             f"{len(self._slots)} kernels.")
        for (owner, attribute), weight in zip(self._slots, quantize_weights):
            setattr(owner, attribute, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.quantize_output:
            return []
        return [_tfmot().quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {"preserve_sparsity": self.preserve_sparsity,
                "quantize_output": self.quantize_output}


class QuantizeLayer(_tfmot_module("quantize_layer").QuantizeLayer):
    """tfmot's input quantiser, as a ``.keras`` file of a QAT model loads it.

    Keras' loader builds a layer from the file's build config and builds it again when the
    model calls it; tfmot's layer does not mark itself built, so it made its range and step
    variables twice (the same names), and the file's three values did not fit its five
    variables ("expected 5 variables, but received 3"). This one builds once. Same class
    name: a layer's weights are found in the file under it.

    Example:
        >>> with quantize_scope():  # loads tfmot's QuantizeLayer as this one
        ...     model = keras.models.load_model("qat.keras")
    """

    def build(self, input_shape):
        if not self.built:
            super().build(input_shape)
            self.built = True


class QuantizeWrapperV2(_tfmot().quantization.keras.QuantizeWrapperV2):
    """tfmot's wrapper of a quantised layer, as a ``.keras`` file of a QAT model loads it.

    tfmot's wrapper lists the wrapped layer's weights among its own when it is built. On a
    layer already built (as ``quantize_apply`` wraps them) that is every weight; on one
    being loaded, not yet built, none, so the file's values did not fit the wrapper's
    variables ("expected 6 variables, but received 8"). This one builds the layer first.

    Example:
        >>> with quantize_scope():  # loads tfmot's QuantizeWrapperV2 as this one
        ...     model = keras.models.load_model("qat.keras")
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        super().build(input_shape)


@contextlib.contextmanager
def quantize_scope():
    """The scope that can load a QAT model of tinymoe layers (a context manager): tfmot's,
    with :class:`QuantizeLayer` and :class:`QuantizeWrapperV2` standing for tfmot's own.

    Example:
        >>> with quantize_scope():
        ...     model = keras.models.load_model("qat.keras")
    """
    ours = {"LayerQuantizeConfig": LayerQuantizeConfig, "ChannelQuantizer": ChannelQuantizer}
    loadable = {"QuantizeLayer": QuantizeLayer, "QuantizeWrapperV2": QuantizeWrapperV2}
    with _tfmot().quantization.keras.quantize_scope(ours), \
            keras.utils.custom_object_scope(loadable):  # inside: it wins over tfmot's names
        yield


def quantize_aware(model, preserve_sparsity=False, simulate_int8=True):
    """A copy of ``model`` ready for quantisation-aware training with ``model.fit``.

    Every layer but the input is wrapped by tfmot with a :class:`LayerQuantizeConfig`;
    nothing is left unquantised (checked before returning). The original model is not
    changed. Compile and fit the result as usual, then convert it with
    :func:`tinymoe.export.to_tflite`.

    Args:
        model: a trained Keras model (functional), e.g. from :func:`tinymoe.models.create_model`.
        preserve_sparsity: prune-preserving QAT: the zeros of a pruned model (after
            :func:`tinymoe.optimize.strip_pruning`) stay zero through training and conversion.
        simulate_int8: fake-quantise every tensor the int8 model quantises inside our layers
            (see :mod:`tinymoe.layers.int8`); False quantises only kernels and each layer's
            output (tinymoe's QAT before the int8 points, kept for comparison).

    Returns:
        the QAT model (``tfmot`` QuantizeWrapperV2 layers).

    Example:
        >>> qat = quantize_aware(model)
        >>> qat.compile("adam", "categorical_crossentropy"); qat.fit(train, epochs=2)
    """
    tfmot = _tfmot()
    quant = tfmot.quantization.keras

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        # Our layers quantise their own output (their last int8 point).
        ours = simulate_int8 and isinstance(layer, Int8Points)
        config = LayerQuantizeConfig(preserve_sparsity, quantize_output=not ours)
        return quant.quantize_annotate_layer(layer, config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with quantize_scope():
        qat = quant.quantize_apply(annotated)
    for layer in qat.layers:
        if simulate_int8 and isinstance(getattr(layer, "layer", None), Int8Points):
            enable_int8_simulation(layer.layer)
    missing = unquantized_layers(qat)
    if missing:
        raise ValueError(f"These layers were left unquantised: {', '.join(missing)}.")
    if preserve_sparsity:
        for layer in qat.layers:
            for weight, _, variables in getattr(layer, "_weight_vars", []):
                variables["sparsity_mask"].assign(tf.cast(tf.not_equal(weight, 0), weight.dtype))
    return qat


def unquantized_layers(model):
    """Names of the layers of a QAT model that tfmot does not quantise.

    A layer counts as quantised when tfmot wrapped it (QuantizeWrapper) or it is tfmot's own
    input quantiser; the model's InputLayer carries no computation.

    Example:
        >>> unquantized_layers(quantize_aware(model))
        []
    """
    quant = _tfmot().quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

    allowed = (quant.QuantizeWrapper, quantize_layer.QuantizeLayer, keras.layers.InputLayer)
    return [layer.name for layer in model.layers if not isinstance(layer, allowed)]


def is_quantize_aware(model):
    """True when ``model`` holds tfmot quantisation wrappers (made by :func:`quantize_aware`).

    Example:
        >>> is_quantize_aware(quantize_aware(model))
        True
    """
    quant = _tfmot().quantization.keras
    return any(isinstance(layer, quant.QuantizeWrapper) for layer in model.layers)


def strip_quantization(qat_model):
    """The float model a QAT model stands for, ready for the int8 converter.

    Each kernel becomes its fake-quantised value (per channel, computed from the trained
    weight as the converter will), so the int8 weights the converter writes are exactly the
    ones QAT trained with; every other weight (biases, norms, batch-norm statistics) is
    copied. tfmot's input quantiser becomes an identity, which the converter removes.

    Why not convert the QAT graph itself: the converter cannot fold a fake-quant node that
    sits on a reshaped weight (an expert kernel ``[E, d, h]`` seen as a ``d x E*h`` filter;
    it fails with "'tfl.quantize' op requires the same shape for all operands and
    results"). Activation ranges are calibrated again at conversion.

    Example:
        >>> float_model = strip_quantization(qat)
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

    quant = _tfmot().quantization.keras
    pairs = []

    def unwrap(layer):
        if isinstance(layer, quant.QuantizeWrapper):
            config = layer.layer.get_config()
            config.pop("simulate_int8", None)  # the float model the converter sees
            fresh = layer.layer.__class__.from_config(config)
            pairs.append((layer, fresh))
            return fresh
        if isinstance(layer, quantize_layer.QuantizeLayer):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    with quantize_scope():
        model = keras.models.clone_model(qat_model, clone_function=unwrap)
    for wrapper, fresh in pairs:
        kernels = [variable for _, _, variable in kernel_slots(fresh)]
        if len(kernels) != len(wrapper._weight_vars):
            raise ValueError(f"{wrapper.name}: {len(wrapper._weight_vars)} quantised kernels "
                             f"for {len(kernels)} kernels in the float layer.")
        for target, (weight, quantizer, variables) in zip(kernels, wrapper._weight_vars):
            target.assign(quantizer(weight, True, weights=variables))
        rest = [w for w in fresh.weights if not any(w is k for k in kernels)]
        ranges = int8_range_variables(wrapper.layer)
        source = [w for w in wrapper.layer.weights if not any(w is r for r in ranges)]
        if [tuple(w.shape) for w in rest] != [tuple(w.shape) for w in source]:
            raise ValueError(f"{wrapper.name}: the float layer's weights do not match the "
                             "QAT layer's.")
        for target, value in zip(rest, source):
            target.assign(value)
    return model
