"""The MobileViTv2 transformer layer and block."""

from tinymoe.backend import keras, register
from tinymoe.layers.attention import SeparableSelfAttention
from tinymoe.layers.conv import ConvBNAct
from tinymoe.layers.feedforward import FeedForward
from tinymoe.layers.moe import MoEFeedForward
from tinymoe.layers.norm import LayerNorm
from tinymoe.layers.patches import PatchFold, PatchUnfold, with_saved_pad_mode
from tinymoe.layers.building import ScopedBuildMixin, build_sublayer


@register
class TransformerLayer(ScopedBuildMixin, keras.layers.Layer):
    """Pre-norm separable attention and feed-forward, each with a residual connection.

    ``x = x + attention(norm(x)); x = x + ffn(norm(x))`` on tokens ``[B, P, N, d]``.

    Args:
        ffn_dim: int, hidden width of the feed-forward (of each expert when ``moe`` is set).
        moe: None for a dense feed-forward, or a dict of :class:`MoEFeedForward` arguments
            for a mixture of experts (``hidden_dim``, each expert's width, defaults to
            ``ffn_dim``).
        activation: feed-forward activation.
        dropout: float, dropout on the attention and feed-forward outputs.
        norm: "layer" (pre-norm: a :class:`LayerNorm` before the attention and before the
            feed-forward, MobileViTv2's), "batch" (the same pre-norms as batch norms,
            folded into the attention's qkv and the feed-forward's first convolution at
            inference: in the int8 graph normalisation costs no op at all) or "mixed" (a
            fast :class:`LayerNorm` before the attention, a folded batch norm before a dense
            feed-forward, a :class:`LayerNorm` before a mixture of experts).
        bn_momentum: float, the batch norms' momentum (``norm="batch"`` or ``"mixed"``).

    Example:
        >>> layer = TransformerLayer(64, moe={"num_experts": 4, "top_k": 1})
        >>> layer(tf.zeros([1, 4, 16, 32])).shape
        TensorShape([1, 4, 16, 32])
    """

    def __init__(self, ffn_dim, moe=None, activation="swish", dropout=0.0, norm="layer",
                 bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.ffn_dim = int(ffn_dim)
        self.moe = None if moe is None else dict(moe)
        self.activation = activation
        self.dropout = float(dropout)
        self.norm = norm
        self.bn_momentum = float(bn_momentum)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
        if norm == "batch" and self.moe is not None:
            raise ValueError("norm='batch' has no mixture-of-experts form yet: the experts "
                             "have no batch norms to fold. Use norm='layer' or 'mixed' for "
                             "MoE layers.")
        self.attn_norm = (None if norm == "batch"
                          else LayerNorm(fast=norm == "mixed", name="attn_norm"))
        self.attn = SeparableSelfAttention(pre_norm=norm == "batch",
                                           bn_momentum=self.bn_momentum, name="attn")
        # A mixture of experts keeps a layer norm before it ("mixed" included): a batch norm
        # there would have to be folded into every expert.
        self.ffn_norm = (LayerNorm(name="ffn_norm")
                         if norm == "layer" or self.moe is not None else None)
        if self.moe is None:
            self.ffn = FeedForward(self.ffn_dim, activation=activation,
                                   pre_norm=norm != "layer", bn_momentum=self.bn_momentum,
                                   name="ffn")
        else:
            self.ffn = MoEFeedForward(**{"hidden_dim": self.ffn_dim, "activation": activation,
                                         **self.moe}, name="moe")
        self.attn_drop = keras.layers.Dropout(self.dropout)
        self.ffn_drop = keras.layers.Dropout(self.dropout)

    @property
    def is_moe(self):
        return isinstance(self.ffn, MoEFeedForward)

    def build(self, input_shape):
        for layer in (self.attn_norm, self.attn, self.ffn_norm, self.ffn):
            if layer is not None:
                build_sublayer(layer, input_shape)
        super().build(input_shape)

    def call(self, x, training=None):
        attended = self.attn(_normed(self.attn_norm, x), training=training)
        x = self.int8("attn_add", x + self.attn_drop(attended, training=training), training)
        return self.int8("ffn_add", x + self.ffn_drop(
            self.ffn(_normed(self.ffn_norm, x), training=training), training=training),
            training)

    def int8_point_names(self):
        return ("attn_add", "ffn_add")

    def trace(self, x):
        """Runs the layer in inference mode and returns its output and what it saw.

        Returns:
            (output, info): ``info["ffn_input"]`` is the normalised post-attention embedding
            the feed-forward (and the router) receives, ``[B, P, N, d]``; for a mixture of
            experts, ``info["routing"]`` is :meth:`MoEFeedForward.route` of it.
        """
        x = x + self.attn(_normed(self.attn_norm, x), training=False)
        ffn_input = _normed(self.ffn_norm, x)
        info = {"ffn_input": ffn_input}
        if self.is_moe:
            info["routing"] = self.ffn.route(ffn_input)
        return x + self.ffn(ffn_input, training=False), info

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ffn_dim": self.ffn_dim, "moe": self.moe,
                "activation": self.activation, "dropout": self.dropout, "norm": self.norm,
                "bn_momentum": self.bn_momentum}


@register
class MobileViTV2Block(ScopedBuildMixin, keras.layers.Layer):
    """The MobileViTv2 block: local representation, L transformer layers, projection.

    ``local_rep`` (3x3 depthwise conv, then 1x1 to ``attn_dim``), ``global_rep`` (unfold into
    2x2 patches, L :class:`TransformerLayer`, a final layer norm, fold) and ``conv_proj``
    (1x1 back to the input channels, batch norm).

    Args:
        attn_dim: int, token width d inside the block.
        ffn_dim: int, feed-forward hidden width.
        num_layers: int, number of transformer layers L.
        patch_size: int, patch side (2).
        moe_layers: tuple of indices (0-based, negative counts from the end) of the
            transformer layers whose feed-forward is a mixture of experts.
        moe: dict of :class:`MoEFeedForward` arguments for those layers.
        capacity_factors: dict from a layer index (of ``moe_layers``) to its own sparse
            dispatch capacity factor, overriding ``moe``'s (calibrated per layer, see
            :func:`tinymoe.export.calibrate_capacity`).
        superclasses: dict from a layer index (of ``moe_layers``, routed per image) to the
            super-class of each class (see :func:`tinymoe.routing.upcycle`,
            ``router="superclass"``).
        activation: activation of the convolutions and feed-forwards.
        bn_momentum: float, batch norm momentum.
        dropout: float, dropout inside the transformer layers.
        pad_mode: how a map that patches cannot tile is padded, "edge" or "zeros" (see
            :class:`PatchUnfold`; a config saved without it loads as "zeros").
        norm: the transformers' normalisation, "layer", "batch" or "mixed" (see
            :class:`TransformerLayer`). With "batch" or "mixed" the block has no final
            layer norm: ``conv_proj`` has its batch norm.

    Example:
        >>> block = MobileViTV2Block(32, 64, 2, moe_layers=(-1,), moe={"num_experts": 4})
        >>> block(tf.zeros([1, 8, 8, 48])).shape
        TensorShape([1, 8, 8, 48])
    """

    def __init__(self, attn_dim, ffn_dim, num_layers, patch_size=2, moe_layers=(), moe=None,
                 activation="swish", bn_momentum=0.9, dropout=0.0, capacity_factors=None,
                 pad_mode="edge", norm="layer", superclasses=None, **kwargs):
        super().__init__(**kwargs)
        self.attn_dim = int(attn_dim)
        self.ffn_dim = int(ffn_dim)
        self.num_layers = int(num_layers)
        self.patch_size = int(patch_size)
        self.moe_layers = tuple(sorted({_layer_index(i, self.num_layers) for i in moe_layers}))
        if self.moe_layers and moe is None:
            raise ValueError(f"{self.name}: moe_layers={self.moe_layers} needs a moe config.")
        self.moe = None if moe is None else dict(moe)
        self.capacity_factors = {_layer_index(i, self.num_layers): float(f)
                                 for i, f in (capacity_factors or {}).items()}
        # Tuples: lists in a dict with int keys would be tracked, and checkpoints refuse them.
        self.superclasses = {_layer_index(i, self.num_layers): tuple(int(v) for v in groups)
                             for i, groups in (superclasses or {}).items()}
        for name in ("capacity_factors", "superclasses"):
            stray = sorted(set(getattr(self, name)) - set(self.moe_layers))
            if stray:
                raise ValueError(f"{self.name}: {name} for layers {stray}, which have no "
                                 f"experts (moe_layers={self.moe_layers}).")
        self.activation = activation
        self.bn_momentum = float(bn_momentum)
        self.dropout = float(dropout)
        self.local_dw = None
        self.local_pw = keras.layers.Conv2D(self.attn_dim, 1, use_bias=False, name="local_pw")
        self.pad_mode = pad_mode
        self.unfold = PatchUnfold(self.patch_size, pad_mode=pad_mode, name="unfold")
        self.transformer = [
            TransformerLayer(self.ffn_dim, moe=self._layer_moe(i),
                             activation=activation, dropout=self.dropout, norm=norm,
                             bn_momentum=self.bn_momentum, name=f"transformer_{i}")
            for i in range(self.num_layers)]
        self.norm_type = norm
        self.norm = LayerNorm(name="norm") if norm == "layer" else None
        self.fold = None
        self.conv_proj = None

    def _layer_moe(self, index):
        """The MoE arguments of transformer layer ``index`` (None: a dense feed-forward)."""
        if index not in self.moe_layers:
            return None
        moe = dict(self.moe)
        if index in self.capacity_factors:
            moe["capacity_factor"] = self.capacity_factors[index]
        if index in self.superclasses:
            moe["superclasses"] = list(self.superclasses[index])
        return moe

    def build(self, input_shape):
        channels, height, width = int(input_shape[-1]), input_shape[1], input_shape[2]
        self.local_dw = ConvBNAct(channels, 3, depthwise=True, activation=self.activation,
                                  bn_momentum=self.bn_momentum, name="local_dw")
        build_sublayer(self.local_dw, input_shape)
        build_sublayer(self.local_pw, input_shape)
        shape = self.local_pw.compute_output_shape(input_shape)
        tokens = self.unfold.compute_output_shape(shape)
        build_sublayer(self.unfold, shape)
        for layer in self.transformer:
            build_sublayer(layer, tokens)
        if self.norm is not None:
            build_sublayer(self.norm, tokens)
        self.fold = PatchFold(height, width, self.patch_size, name="fold")
        build_sublayer(self.fold, tokens)
        self.conv_proj = ConvBNAct(channels, 1, activation=None, bn_momentum=self.bn_momentum,
                                   name="conv_proj")
        build_sublayer(self.conv_proj, shape)
        super().build(input_shape)

    def call(self, x, training=None):
        local = self.local_pw(self.local_dw(x, training=training))
        tokens = self.unfold(self.int8("local_pw", local, training))
        for layer in self.transformer:
            tokens = layer(tokens, training=training)
        return self.conv_proj(self.fold(_normed(self.norm, tokens)), training=training)

    def int8_point_names(self):
        return ("local_pw",)

    def trace(self, x):
        """Inference-mode output plus, for each transformer layer, what it saw.

        Returns:
            (output, infos): ``infos[i]`` is the ``info`` of transformer layer i (see
            :meth:`TransformerLayer.trace`).
        """
        tokens = self.unfold(self.local_pw(self.local_dw(x, training=False)))
        infos = []
        for layer in self.transformer:
            tokens, info = layer.trace(tokens)
            infos.append(info)
        return self.conv_proj(self.fold(_normed(self.norm, tokens)), training=False), infos

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "attn_dim": self.attn_dim, "ffn_dim": self.ffn_dim,
                "num_layers": self.num_layers, "patch_size": self.patch_size,
                "moe_layers": list(self.moe_layers), "moe": self.moe,
                "capacity_factors": {str(i): f for i, f in self.capacity_factors.items()},
                "superclasses": {str(i): list(g) for i, g in self.superclasses.items()},
                "activation": self.activation, "bn_momentum": self.bn_momentum,
                "dropout": self.dropout, "pad_mode": self.pad_mode, "norm": self.norm_type}

    @classmethod
    def from_config(cls, config):
        return cls(**with_saved_pad_mode(config))


NORMS = ("layer", "batch", "mixed")


def _normed(norm, x):
    """``norm(x)``, or ``x`` where the layer has no pre-norm (``norm="batch"``)."""
    return x if norm is None else norm(x)


def _layer_index(index, num_layers):
    index = int(index)
    if not -num_layers <= index < num_layers:
        raise ValueError(f"Transformer layer index {index} is out of range for a block of "
                         f"{num_layers} layers.")
    return index % num_layers
